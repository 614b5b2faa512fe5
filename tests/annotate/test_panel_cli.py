"""`melt annotate --panel` as a user runs it: real subprocesses against the loopback server, killed with SIGKILL
and interrupted with SIGINT mid-panel, with audio the server decodes, and with bad settings."""

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
import soundfile
from annotate_helpers import FakeOpenAIServer

from corpora import Prosody, Speech
from melt.annotate.panel import load_panel
from melt.annotate.store import STORE_NAME
from melt.corpus.schema import conform, write_table
from timing import scaled

LINES = ("I can't believe you did that to me again.", "We were on a break, and everybody knows it.")


@pytest.fixture(scope="module")
def voices(tmp_path_factory):
    speech = Speech(tmp_path_factory.mktemp("panel_cli_speech"))
    return [speech.source(LINES[0], Prosody(amplitude=160)), speech.source(LINES[1], Prosody(amplitude=25))]


def write_corpus(folder: Path, voices, n: int) -> Path:
    rows = [
        {
            "id": f"utt{i:03d}",
            "speaker": f"S{i % 3}",
            "text": f"{LINES[i % 2]} ({i})",
            "audio": str(voices[i % 2]),
        }
        for i in range(n)
    ]
    return write_table(conform(pd.DataFrame(rows)), folder / "corpus.parquet")


def command(corpus: Path, out: Path, server: FakeOpenAIServer, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "melt", "annotate", str(corpus), "--out", str(out), "--base-url", server.base_url,
        "--model", "Qwen/Qwen2-Audio-7B-Instruct", "--timeout", "5", "--quiet", *extra,
    ]  # fmt: skip


def run(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        args, capture_output=True, text=True, env=env, timeout=scaled(120), stdin=subprocess.DEVNULL
    )


def replies(server: FakeOpenAIServer) -> list[dict]:
    return [e for e in list(server.log) if e.get("status") == 200 and e.get("text")]


def start_and_wait(args: list[str], server: FakeOpenAIServer, replies_wanted: int) -> subprocess.Popen:
    process = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "COLUMNS": "200"}
    )
    deadline = time.monotonic() + scaled(60)
    while len(replies(server)) < replies_wanted and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert process.poll() is None, process.stderr.read().decode()
    return process


def test_kill_9_mid_panel_then_resume_sends_no_finished_vote_again(tmp_path, voices):
    n, size = 40, 8
    corpus = write_corpus(tmp_path, voices, n)
    out = tmp_path / "run"
    with FakeOpenAIServer(latency=0.05) as server:
        args = command(corpus, out, server, "--panel", "scaling-ambiguity", "--annotators", str(size), "--audio",
                       "-j", "4")  # fmt: skip
        process = start_and_wait(args, server, 80)
        process.send_signal(signal.SIGKILL)
        process.wait()
        time.sleep(0.3)  # the replies in flight reach the server's log
        before = [e for e in server.entries(status=200) if e.get("text")]
        with sqlite3.connect(out / STORE_NAME) as db:
            done = set(
                db.execute("SELECT utterance_id, sample FROM requests WHERE status = 'done' AND turn >= 0")
            )
        stored = len(done)
        assert 75 <= stored < n * size
        last = max(e["n"] for e in server.entries())
        finished = run(args)
        after = [e for e in server.entries() if e["n"] > last]
    assert finished.returncode == 0, finished.stderr
    # No probe again (its findings are in the store) and only the votes the store lacked.
    assert all(e.get("text") for e in after) and server.gets == 1
    assert len(after) == n * size - stored
    resent = {e["key"] for e in before} & {e["key"] for e in after}
    assert len(resent) <= 4  # at most the requests in flight when the process died
    # No vote the store had finished is asked again: (utterance, annotator) from the text and the temperature.
    annotator_of = {m.temperature: m.index for m in load_panel("scaling-ambiguity", size).members()}
    utterance_of = {f"{LINES[i % 2]} ({i})": f"utt{i:03d}" for i in range(n)}
    asked_again = {(utterance_of[e["text"]], annotator_of[e["temperature"]]) for e in after}
    assert len(asked_again) == len(after) and not asked_again & done
    votes = pd.read_parquet(out / "votes.parquet")
    assert len(votes) == n * size and (votes["status"] == "ok").all()
    expected = ["anger" if i % 2 == 0 else "sadness" for i in range(n)]
    labels = {uid: set(part["label"]) for uid, part in votes.groupby("id")}
    assert [labels[f"utt{i:03d}"] for i in range(n)] == [{label} for label in expected]
    table = pd.read_parquet(out / "annotations.parquet")
    assert table["emotion"].tolist() == expected and (table["samples"] == size).all()
    assert "Fleiss' κ of the panel" in finished.stdout and "votes.parquet" in finished.stdout


def test_sigint_mid_panel_writes_the_votes_so_far_and_exits_130(tmp_path, voices):
    corpus = write_corpus(tmp_path, voices, 30)
    out = tmp_path / "run"
    with FakeOpenAIServer(latency=0.1) as server:
        args = command(corpus, out, server, "--panel", "scaling-ambiguity", "--annotators", "4", "-j", "2")
        process = start_and_wait(args, server, 10)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=scaled(60))
        assert process.returncode == 130, stderr.decode()
        votes = pd.read_parquet(out / "votes.parquet")
        run_json = json.loads((out / "run.json").read_text())
        assert run_json["interrupted"] == "SIGINT" and not run_json["complete"]
        pending = votes[votes["status"] == "pending"]
        assert len(pending) > 0 and pending["reason"].str.startswith("not asked").all()
        assert len(votes[votes["status"] == "ok"]) == run_json["panel"]["valid_votes"] > 0
        assert sum(run_json["panel"]["votes"].values()) == 120
        finished = run(args)
    assert finished.returncode == 0, finished.stderr
    assert (pd.read_parquet(out / "votes.parquet")["status"] == "ok").all()


@pytest.mark.parametrize(
    ("server_options", "extra", "message"),
    [
        ({"reject_audio": True}, (), "does not take audio"),
        ({"ignore_audio": True}, (), "ignores audio"),
    ],
)
def test_an_endpoint_that_rejects_or_ignores_audio_is_one_line_and_exit_2(
    tmp_path, voices, server_options, extra, message
):
    corpus = write_corpus(tmp_path, voices, 3)
    with FakeOpenAIServer(**server_options) as server:
        result = run(
            command(corpus, tmp_path / "run", server, "--panel", "scaling-ambiguity", "--audio", *extra)
        )
        assert not [e for e in server.entries() if e.get("text")]  # no utterance was asked
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr


def test_allow_ignored_audio_goes_on_and_says_so(tmp_path, voices):
    corpus = write_corpus(tmp_path, voices, 2)
    with FakeOpenAIServer(ignore_audio=True) as server:
        result = run(command(corpus, tmp_path / "run", server, "--panel", "scaling-ambiguity", "--annotators", "2",
                             "--audio", "--allow-ignored-audio"))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "ignores the audio" in result.stderr
    assert "ignores audio" in result.stdout  # the summary's server check line
    run_json = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run_json["audio"]["check"]["status"] == "ignores audio"


def test_dry_run_prints_audio_tokens_and_an_unknown_rate(tmp_path, voices):
    corpus = write_corpus(tmp_path, voices, 4)
    seconds = sum(soundfile.info(str(voices[i % 2])).duration for i in range(4)) * 8
    with FakeOpenAIServer() as server:
        known = run(
            command(corpus, tmp_path / "run", server, "--panel", "scaling-ambiguity", "--audio", "--dry-run")
        )
        unknown = run(command(corpus, tmp_path / "run", server, "--panel", "scaling-ambiguity", "--audio",
                              "--dry-run", "--model", "my-audio-model"))  # fmt: skip
        assert server.entries() == [] and server.gets == 0
    assert known.returncode == 0, known.stderr
    assert f"{seconds:,.1f}" in known.stdout
    tokens = -(-seconds * 25 // 1)
    assert f"{int(tokens):,} at 25/s" in known.stdout and "Qwen2-Audio" in known.stdout
    assert "requests per utterance" in known.stdout and " 8 " in known.stdout
    assert unknown.returncode == 0, unknown.stderr
    assert "unknown: no audio token rate for my-audio-model" in unknown.stdout
    assert not (tmp_path / "run" / STORE_NAME).exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--panel", "scaling-ambiguity", "--temperature", "0.7"), "--temperature does not apply to a panel"),
        (("--panel", "scaling-ambiguity", "--samples", "3"), "--samples does not apply to a panel"),
        (("--panel", "nonsense"), "neither a built-in panel"),
        (("--annotators", "4"), "give the panel too"),
        (("--panel", "scaling-ambiguity", "--long-audio", "chop"), "Invalid value for '--long-audio'"),
        (("--panel", "scaling-ambiguity", "--annotators", "0"), "annotators: Input should be greater than"),
        (("--panel", "scaling-ambiguity", "--max-audio-seconds", "0"), "max_audio_seconds"),
        (("--panel", "{bad}"), "bad.yaml"),
    ],
)
def test_bad_panel_settings_exit_2_with_one_line(tmp_path, voices, extra, message):
    corpus = write_corpus(tmp_path, voices, 2)
    bad = tmp_path / "bad.yaml"
    bad.write_text("annotators: -3\npersonas: [{name: x, focus: y}]\ntemperatures: [0.5]\n")
    extra = tuple(str(bad) if e == "{bad}" else e for e in extra)
    with FakeOpenAIServer() as server:
        result = run(command(corpus, tmp_path / "run", server, *extra))
        assert server.entries() == []
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_help_lists_choices_and_defaults():
    result = run([sys.executable, "-m", "melt", "annotate", "--help"])
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "[scaling-ambiguity|FILE.yaml]" in text and "<trim|split>" in text
    assert "[default: 30.0]" in text and "8 for scaling-ambiguity" in text
