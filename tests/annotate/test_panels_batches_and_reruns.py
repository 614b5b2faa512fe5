"""Defects found where the merged features meet (panels, audio, the Batch API, provenance and help, the engine
review): each test is what a user does, and fails while the defect is there."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile
from annotate_helpers import FakeOpenAIServer

from batch_server import FakeBatchServer
from melt.annotate import AnnotateConfig, run_annotation
from melt.annotate.store import STORE_NAME
from melt.corpus.schema import conform, write_table
from melt.llm.pricing import price_of
from openai_server import _audio_parts
from timing import scaled

AUDIO_MODEL = "gpt-4o-audio-preview"


class AudioBatchServer(FakeBatchServer):
    """The Batch API server answering batch lines from their audio as the live endpoint does (OpenAI's batch
    replies count audio tokens in `usage.prompt_tokens_details.audio_tokens` like live ones)."""

    def completion(self, body, line, markers, count, repair, key, received, audio=()):
        if not audio:
            audio = _audio_parts(body.get("messages") or [])
        return super().completion(body, line, markers, count, repair, key, received, audio)


def audio_corpus(folder: Path, n: int = 4) -> Path:
    """n utterances with recordings (2 s of noise, loud and soft in turn) and every column the melt prompt reads."""
    rows = []
    for i in range(n):
        level = 0.5 if i % 2 == 0 else 0.02
        signal = (level * np.random.default_rng(i).standard_normal(32_000)).clip(-1, 1).astype(np.float32)
        path = folder / f"u{i}.wav"
        soundfile.write(path, signal, 16_000, subtype="PCM_16")
        rows.append({"id": f"u{i}", "speaker": f"S{i % 2}", "text": f"Line {i}: we were on a break.",
                     "audio": str(path), "label": "joy", "season": 1, "episode": 1, "dialogue_id": 0,
                     "utterance_id": i})  # fmt: skip
    return write_table(conform(pd.DataFrame(rows)), folder / "corpus.parquet")


def melt(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200", "OPENAI_API_KEY": "sk-test"}
    return subprocess.run(
        [sys.executable, "-m", "melt", "annotate", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=scaled(180),
        stdin=subprocess.DEVNULL,
    )


def stored_costs(out: Path) -> list[tuple[int, float]]:
    with sqlite3.connect(out / STORE_NAME) as db:
        return db.execute(
            "SELECT prompt_tokens, cost_usd FROM requests WHERE turn >= 0 ORDER BY key"
        ).fetchall()


def test_batch_replies_with_audio_are_billed_at_the_audio_price(tmp_path):
    """A user runs an audio panel through the Batch API (`--panel ... --audio --batch --wait`) on
    gpt-4o-audio-preview, whose audio input costs $40/M live and $20/M in a batch. Observed: the batch replies
    are priced as if every prompt token were text ($1.25/M), so run.json and the summary report about 1/8 of
    what the audio cost (the live run of the same requests, priced with its audio tokens, costs 9x more,
    not 2x). Expected: a batch reply costs half the live reply of the same request, audio tokens at the batch
    audio price."""
    corpus = pd.read_parquet(audio_corpus(tmp_path))
    with AudioBatchServer(in_progress=0.3) as server:
        costs = {}
        for batch in (False, True):
            config = AnnotateConfig(
                base_url=server.base_url, model=AUDIO_MODEL, panel="scaling-ambiguity", annotators=2,
                audio=True, batch=batch, batch_wait=True, batch_poll=0.1, batch_poll_max=0.3, timeout=5,
            )  # fmt: skip
            out = tmp_path / ("batch" if batch else "live")
            result = run_annotation(corpus, config, out)
            assert result.complete
            costs[batch] = stored_costs(out)
    live, batch = costs[False], costs[True]
    assert [tokens for tokens, _ in live] == [tokens for tokens, _ in batch]  # the same requests, same usage
    assert price_of(AUDIO_MODEL, batch=True).audio_input == 20.0
    for (_, live_cost), (_, batch_cost) in zip(live, batch, strict=True):
        assert batch_cost == pytest.approx(live_cost / 2, rel=0.01)


def test_continuing_a_run_folder_whose_base_url_has_a_query(tmp_path):
    """A user annotates through a server whose URL carries a query (Azure OpenAI's `?api-version=...`), then
    continues the folder as `melt annotate --help` says: `melt annotate RUN_DIR` (e.g. to collect a batch).
    Observed: exit 2, "this run folder holds replies of another configuration: base_url was
    '...?api-version=2024-10-21', now '...?api-version=***'": run.json records the URL with every query value
    masked, and the continuation sends that masked URL. Expected: the folder continues (only values named like
    credentials are masked in the identity; the recorded URL must keep what the server needs, or the
    continuation must take the folder's own identity URL)."""
    corpus = audio_corpus(tmp_path)
    out = tmp_path / "run"
    with FakeOpenAIServer() as server:
        url = f"{server.base_url}?api-version=2024-10-21"
        first = melt(str(corpus), "--out", str(out), "--base-url", url, "--limit", "2", "--quiet")
        assert first.returncode == 0, first.stderr
        again = melt(str(out), "--quiet")
    assert again.returncode == 0, again.stderr


def test_a_config_file_cannot_slip_a_temperature_or_prompt_past_a_panel(tmp_path):
    """A user puts `panel: scaling-ambiguity`, `temperature: 0.2` and `prompt: dialogue` in a --config file.
    The same settings as flags (`--panel ... --temperature 0.2`) are refused ("--temperature does not apply to a
    panel"). Observed: from the file they are silently ignored: the run succeeds with the panel's template and
    annotator temperatures, while run.json's config says temperature 0.2 and prompt dialogue. Expected: the same
    refusal (exit 2, naming the setting) whether it comes from a flag or the config file."""
    corpus = audio_corpus(tmp_path)
    settings = tmp_path / "panel.yaml"
    settings.write_text("panel: scaling-ambiguity\nannotators: 3\ntemperature: 0.2\nprompt: dialogue\n")
    with FakeOpenAIServer() as server:
        by_flag = melt(str(corpus), "--out", str(tmp_path / "a"), "--base-url", server.base_url,
                       "--panel", "scaling-ambiguity", "--temperature", "0.2", "--quiet")  # fmt: skip
        by_file = melt(str(corpus), "--out", str(tmp_path / "b"), "--base-url", server.base_url,
                       "--config", str(settings), "--quiet")  # fmt: skip
        asked = {e.get("temperature") for e in server.entries() if e.get("text")}
    assert by_flag.returncode == 2 and "does not apply to a panel" in by_flag.stderr
    assert 0.2 not in asked  # the file's temperature was not what the annotators were asked at
    assert by_file.returncode == 2, (
        "a panel run took temperature and prompt from the config file and ignored them"
    )


def test_max_cost_holds_with_audio_billed_above_the_table_rate(tmp_path):
    """A user runs `--audio --max-cost 0.2 -j 8` on gpt-4o-audio-preview (audio input $40/M). The table says 10
    audio tokens per second; this server bills 25 per second in `usage.prompt_tokens_details.audio_tokens`, and
    the run's own audio probe measures it (run.json: audio.check.audio_tokens_per_second_measured = 25).
    Observed: the reservations keep using 10/s, so 8 requests in flight are each under-reserved and the run
    spends $0.215 of a $0.2 budget. Expected: the run never spends more than --max-cost (reserve with the
    measured or billed audio rate)."""
    signal = (0.3 * np.random.default_rng(0).standard_normal(16_000 * 20)).clip(-1, 1).astype(np.float32)
    soundfile.write(tmp_path / "long.wav", signal, 16_000, subtype="PCM_16")
    rows = [{"id": f"u{i}", "speaker": "S", "text": f"Line {i}.", "audio": str(tmp_path / "long.wav"),
             "season": 1, "episode": 1, "dialogue_id": 0, "utterance_id": i} for i in range(20)]  # fmt: skip
    table = conform(pd.DataFrame(rows))
    with FakeOpenAIServer(latency=0.2, audio_tokens_per_second=25.0) as server:
        config = AnnotateConfig(base_url=server.base_url, model=AUDIO_MODEL, audio=True, max_cost=0.2,
                                concurrency=8, timeout=scaled(10))  # fmt: skip
        result = run_annotation(table, config, tmp_path / "run")
    assert result.stats.stopped_by_budget  # the budget was the limit (not the corpus)
    measured = json.loads((tmp_path / "run" / "run.json").read_text())["audio"]["check"]
    assert measured["audio_tokens_per_second_measured"] == 25.0
    assert result.stats.cost_usd <= 0.2, f"spent ${result.stats.cost_usd:.4f} of a $0.2 budget"


def test_continuing_a_panel_file_run_from_another_directory(tmp_path):
    """A user runs `melt annotate corpus.parquet --out run --panel mypanel.yaml` in the folder holding the
    panel file, then, from elsewhere, `melt annotate /abs/path/run` to continue it (e.g. to collect a batch).
    Observed: exit 2, "--panel 'mypanel.yaml' is neither a built-in panel ... nor an existing file": run.json
    records the panel file's path as typed (relative), though it records the corpus's absolute path. Expected:
    the folder continues with the panel it was made with (absolute path recorded, or the panel's definition)."""
    audio_corpus(tmp_path)  # corpus.parquet in tmp_path
    (tmp_path / "mypanel.yaml").write_text(
        "annotators: 2\npersonas:\n  - {name: calm, focus: Listen calmly.}\n  - {name: keen, focus: Listen keenly.}\n"
        "temperatures: [0.2, 0.8]\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with FakeOpenAIServer() as server:
        first = subprocess.run(
            [sys.executable, "-m", "melt", "annotate", "corpus.parquet", "--out", "run", "--base-url",
             server.base_url, "--panel", "mypanel.yaml", "--quiet"],
            cwd=tmp_path, capture_output=True, text=True, timeout=scaled(180), stdin=subprocess.DEVNULL,
            env={**os.environ, "OPENAI_API_KEY": "sk-test"},
        )  # fmt: skip
        assert first.returncode == 0, first.stderr
        again = subprocess.run(
            [sys.executable, "-m", "melt", "annotate", str(tmp_path / "run"), "--quiet"],
            cwd=elsewhere, capture_output=True, text=True, timeout=scaled(180), stdin=subprocess.DEVNULL,
            env={**os.environ, "OPENAI_API_KEY": "sk-test"},
        )  # fmt: skip
    assert again.returncode == 0, again.stderr


def test_cancel_batch_wait_writes_the_replies_it_collected_into_the_outputs(tmp_path):
    """A user submits a panel through the Batch API, then `melt annotate RUN_DIR --cancel-batch --wait`: the
    command says "stored N repl(ies) they completed" (paid). Observed: annotations.*, votes.parquet and
    run.json are left as before: every vote still `pending`, run.json still says one batch in progress, and its
    totals leave the paid replies out; `melt ambiguity --votes RUN_DIR` then reads no vote at all. Expected:
    like every other invocation that stores replies, the tables and run.json show what the folder holds."""
    corpus = audio_corpus(tmp_path)
    out = tmp_path / "run"
    with FakeBatchServer(in_progress=scaled(20)) as server:
        submitted = melt(str(corpus), "--out", str(out), "--base-url", server.base_url, "--panel",
                         "scaling-ambiguity", "--annotators", "3", "--batch", "--quiet")  # fmt: skip
        assert submitted.returncode == 3, submitted.stderr
        deadline = scaled(30)
        start = time.monotonic()
        while not any(server._object(b)["request_counts"]["completed"] for b in server.created_batches()):
            assert time.monotonic() - start < deadline
            time.sleep(0.1)
        cancelled = melt(str(out), "--cancel-batch", "--wait", "--quiet")
    assert cancelled.returncode == 0, cancelled.stderr
    assert "stored" in cancelled.stdout  # it collected paid replies
    with sqlite3.connect(out / STORE_NAME) as db:
        stored = db.execute("SELECT COUNT(*) FROM requests WHERE status = 'done' AND turn >= 0").fetchone()[0]
    assert stored > 0
    votes = pd.read_parquet(out / "votes.parquet")
    assert (votes["status"] == "ok").sum() == stored
    recorded = json.loads((out / "run.json").read_text())
    assert recorded["batch"]["in_progress"] == 0
    assert recorded["totals"]["requests"] == stored
