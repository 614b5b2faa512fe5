"""A run folder as real processes use it: one process at a time, one configuration, signals, a full disk,
outputs written together, and no secret in any of its files."""

from __future__ import annotations

import json
import os
import shutil
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
from timing import scaled

KEY = "sk-melt-folder-7Hq2Lx9Vb4Nc"
pytestmark = pytest.mark.timeout(300)


def melt_annotate(corpus: Path, out: Path, base_url: str, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "melt", "annotate", str(corpus), "--out", str(out), "--base-url", base_url,
        "--model", "gpt-4o-mini", "--timeout", "10", "--quiet", *extra,
    ]  # fmt: skip


def environment(key: str = KEY) -> dict[str, str]:
    return {**os.environ, "OPENAI_API_KEY": key, "COLUMNS": "200"}


def run(command: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        env=environment(),
        timeout=scaled(timeout),
        stdin=subprocess.DEVNULL,
    )


def start(command: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        command, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_for(condition, process: subprocess.Popen | None = None, timeout: float = 60) -> None:
    deadline = time.monotonic() + scaled(timeout)
    while not condition():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the process ended early: {process.communicate()}")
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.02)


def answered(server: FakeOpenAIServer) -> list[dict]:
    """Chat requests the server has answered so far (the probe excluded), without waiting for those in flight."""
    return [e for e in list(server.log) if e.get("status") == 200 and e.get("text")]


def stored_keys(out: Path) -> int:
    with sqlite3.connect(out / STORE_NAME) as db:
        return db.execute("SELECT COUNT(*) FROM requests WHERE status = 'done' AND turn >= 0").fetchone()[0]


def corpus_of(tmp_path: Path, n: int, name: str = "corpus.parquet") -> Path:
    return write_table(corpus_table([f"Folder test line {i}." for i in range(n)]), tmp_path / name)


# -- one process per folder ----------------------------------------------------------------------------------


def test_a_second_process_on_a_folder_in_use_exits_naming_the_holder(tmp_path):
    corpus = corpus_of(tmp_path, 120)
    out = tmp_path / "run"
    with FakeOpenAIServer(latency=0.05, api_key=KEY) as server:
        command = melt_annotate(corpus, out, server.base_url, "-j", "2")
        first = start(command)
        wait_for(lambda: len(answered(server)) >= 10, first)
        second = run(command)
        assert first.wait(timeout=scaled(120)) == 0, first.communicate()
        total = [e for e in server.entries(status=200) if e.get("text")]
    assert second.returncode == 2, second.stderr
    assert str(first.pid) in second.stderr and "in use" in second.stderr
    assert "Traceback" not in second.stderr
    # Every prompt was paid for once.
    assert len(total) == len({e["key"] for e in total}) == 120


def test_the_lock_of_a_killed_process_is_taken_over(tmp_path):
    corpus = corpus_of(tmp_path, 80)
    out = tmp_path / "run"
    with FakeOpenAIServer(latency=0.05, api_key=KEY) as server:
        command = melt_annotate(corpus, out, server.base_url, "-j", "2")
        first = start(command)
        wait_for(lambda: len(answered(server)) >= 5, first)
        first.kill()
        first.wait()
        assert (out / "run.lock").read_text().startswith(f'{{"pid": {first.pid}')
        again = run(command)
    assert again.returncode == 0, again.stderr
    assert (pd.read_parquet(out / "annotations.parquet")["status"] == "ok").all()


# -- one configuration per folder ------------------------------------------------------------------------------


def test_another_server_into_the_same_folder_is_refused_unless_forced(tmp_path):
    corpus = corpus_of(tmp_path, 4)
    out = tmp_path / "run"
    with FakeOpenAIServer(api_key=KEY) as a, FakeOpenAIServer(api_key=KEY) as b:
        assert run(melt_annotate(corpus, out, a.base_url)).returncode == 0
        refused = run(melt_annotate(corpus, out, b.base_url))
        assert refused.returncode == 2
        assert "base_url" in refused.stderr and a.base_url in refused.stderr and b.base_url in refused.stderr
        assert "--out" in refused.stderr and "--force-reuse" in refused.stderr
        assert "Traceback" not in refused.stderr
        assert b.entries() == []
        dry = run(melt_annotate(corpus, out, b.base_url, "--dry-run"))
        assert dry.returncode == 2 and "base_url" in dry.stderr  # no estimate of a run that would be refused
        changed = run(melt_annotate(corpus, out, a.base_url, "--prompt", "dialogue"))
        assert changed.returncode == 2 and "prompt" in changed.stderr
        schema = run(melt_annotate(corpus, out, a.base_url, "--schema", "structured"))
        assert schema.returncode == 2 and "schema" in schema.stderr
        temperature = run(melt_annotate(corpus, out, a.base_url, "--temperature", "0.3"))
        assert temperature.returncode == 2 and "temperature" in temperature.stderr

        forced = run(melt_annotate(corpus, out, b.base_url, "--force-reuse"))
        assert forced.returncode == 0, forced.stderr
        run_json = json.loads((out / "run.json").read_text())
        assert run_json["identity"]["backend"]["base_url"] == b.base_url
        # After --force-reuse the folder belongs to B: a rerun with B is not refused, one with A is.
        assert run(melt_annotate(corpus, out, b.base_url)).returncode == 0
        assert run(melt_annotate(corpus, out, a.base_url)).returncode == 2


# -- signals -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stores_replies_in_flight_writes_everything_and_exits(tmp_path, sig, code):
    corpus = corpus_of(tmp_path, 200)
    out = tmp_path / "run"
    with FakeOpenAIServer(latency=0.4, api_key=KEY) as server:
        process = start(melt_annotate(corpus, out, server.base_url, "-j", "4"))
        wait_for(lambda: len(answered(server)) >= 8, process)
        process.send_signal(sig)
        stdout, stderr = process.communicate(timeout=scaled(60))
        paid = {e["key"] for e in server.entries(status=200) if e.get("text")}
    assert process.returncode == code, stderr
    assert "Traceback" not in stderr
    assert "interrupted" in stdout and "rerun" in stdout
    # No reply the server sent was lost: the ones in flight were waited for and stored.
    assert stored_keys(out) == len(paid) < 200
    parquet = pd.read_parquet(out / "annotations.parquet")
    csv = pd.read_csv(out / "annotations.csv")
    run_json = json.loads((out / "run.json").read_text())
    assert len(parquet) == len(csv) == 200
    assert (parquet["status"] == csv["status"]).all()
    assert run_json["status"] == {"ok": len(paid), "pending": 200 - len(paid)}
    assert run_json["interrupted"] == signal.Signals(sig).name
    assert [p.name for p in out.iterdir() if p.name.endswith(".tmp")] == []


def test_stale_temporary_files_are_removed(tmp_path):
    corpus = corpus_of(tmp_path, 3)
    out = tmp_path / "run"
    out.mkdir()
    stale = [out / ".annotations.parquet.x1y2.tmp", out / ".run.json.abc.tmp", out / ".annotations.csv.q.tmp"]
    for path in stale:
        path.write_text("half a table")
    with FakeOpenAIServer(api_key=KEY) as server:
        assert run(melt_annotate(corpus, out, server.base_url)).returncode == 0
    assert not any(path.exists() for path in stale)


# -- a full disk --------------------------------------------------------------------------------------------------


def _small_filesystem_prefix(folder: Path, megabytes: int) -> tuple[list[str], list[str]]:
    """A command prefix running the rest inside a real tmpfs of `megabytes` mounted at `folder` (a private
    mount namespace: nothing outside sees it), and the shell script's own prefix."""
    if shutil.which("unshare") and subprocess.run(["unshare", "-Urm", "true"]).returncode == 0:
        mount = f"mount -t tmpfs -o size={megabytes}m melt-test {folder}"
        return ["unshare", "-Urm", "sh", "-c"], [mount]
    pytest.fail("no way to mount a small filesystem here: unshare -Urm is not allowed")


def test_a_full_disk_stops_the_run_at_the_first_failed_write(tmp_path):
    corpus = corpus_of(tmp_path, 1500)
    out_root = tmp_path / "small"
    out_root.mkdir()
    out = out_root / "run"
    prefix, setup = _small_filesystem_prefix(out_root, 2)
    count = (
        f"{sys.executable} -c \"import sqlite3; db = sqlite3.connect('{out / STORE_NAME}'); "
        "print('stored', db.execute(\\\"SELECT COUNT(*) FROM requests WHERE status = 'done'\\\").fetchone()[0])\""
    )
    with FakeOpenAIServer(latency=0.01, api_key=KEY) as server:
        annotate = " ".join(f"'{part}'" for part in melt_annotate(corpus, out, server.base_url, "-j", "8"))
        script = " && ".join(setup) + f" && {{ {annotate}; rc=$?; {count}; exit $rc; }}"
        result = subprocess.run(
            [*prefix, script], capture_output=True, text=True, env=environment(), timeout=scaled(240)
        )
        sent = len([e for e in server.entries() if e.get("text")])
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and ("full" in errors[0] or "disk" in errors[0]), result.stderr
    assert STORE_NAME in errors[0]
    stored = int(result.stdout.split("stored")[-1])
    # It stopped at the first failed commit: at most the requests in flight and one commit batch were sent
    # beyond what the store kept; far from the whole corpus.
    assert 0 < stored < 1500
    assert sent <= stored + 40, (sent, stored)


# -- secrets -------------------------------------------------------------------------------------------------------


def test_a_server_echoing_the_key_never_gets_it_into_any_file_or_output(tmp_path):
    texts = ["[[echo-headers]] Echo my headers.", "[[echo-content]] Echo them in the answer.", "Plain."]
    corpus = write_table(corpus_table(texts), tmp_path / "corpus.csv")
    out = tmp_path / "run"
    with FakeOpenAIServer(api_key=KEY) as server:
        result = run(melt_annotate(corpus, out, server.base_url, "--max-retries", "1"))
    assert result.returncode == 3, result.stderr  # the echo rows failed or stayed invalid
    assert KEY not in result.stdout + result.stderr
    leaked = [str(p) for p in out.rglob("*") if p.is_file() and KEY.encode() in p.read_bytes()]
    assert leaked == []
    table = pd.read_csv(out / "annotations.csv")
    assert table["status"].tolist()[2] == "ok"
    assert "***" in " ".join(
        map(str, table["error"].dropna().tolist() + table["raw_reply"].dropna().tolist())
    )
