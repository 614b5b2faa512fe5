"""`melt annotate` without a server or key: the bundled model, offline, through the whole annotation engine.

The commands run in a fresh network namespace where `unshare --net` is allowed (root in CI), so any attempt to
reach the network fails the run; elsewhere they run normally.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib.resources import files

import pandas as pd
import pytest

from timing import scaled

pytest.importorskip("llama_cpp")

from melt.llm.model_assets import bundled_model_path, cache_dir

CORPUS = files("melt") / "data" / "example_corpus.csv"
ONE_LINE = "annotating offline with the bundled Gemma 3 270M model"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _offline_prefix() -> list[str]:
    if shutil.which("unshare") and subprocess.run(["unshare", "--net", "true"]).returncode == 0:
        return ["unshare", "--net"]
    return []


def melt(*args: object) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    env.update(COLUMNS="200", MELT_CACHE=str(cache_dir()))
    return subprocess.run(
        [*_offline_prefix(), sys.executable, "-m", "melt", "annotate", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=scaled(500),
        stdin=subprocess.DEVNULL,
    )


def test_annotate_without_server_or_key_uses_the_bundled_model_offline(tmp_path):
    bundled_model_path()  # assembled once here rather than inside the timed runs
    out = tmp_path / "run"
    args = (CORPUS, "--out", out, "--limit", "2", "--max-tokens", "200", "--temperature", "0", "-q")

    first = melt(*args)
    assert first.returncode == 0, first.stderr
    assert first.stderr.count(ONE_LINE) == 1
    notice = next(line for line in first.stderr.splitlines() if ONE_LINE in line)
    assert "not research-grade" in notice and "--base-url" in notice and "--model PATH.gguf" in notice
    annotations = pd.read_parquet(out / "annotations.parquet")
    assert list(annotations["status"]) == ["ok", "ok"]
    assert set(annotations["emotion"]) <= {
        "anger",
        "disgust",
        "fear",
        "joy",
        "neutral",
        "sadness",
        "surprise",
    }
    run = json.loads((out / "run.json").read_text())
    assert run["backend"] == "local" and run["model"] == "gemma-3-270m-q4_k_m.gguf"
    assert "local gemma-3-270m-q4_k_m.gguf" in first.stdout
    assert "tokens this run" in first.stdout
    # Local models cost nothing, and the tokens are still counted.
    assert run["this_invocation"]["cost_usd"] == 0 and run["this_invocation"]["prompt_tokens"] > 0

    # Rerunning resumes from the store: nothing is generated again.
    again = melt(*args)
    assert again.returncode == 0, again.stderr
    rerun = json.loads((out / "run.json").read_text())["this_invocation"]
    assert (rerun["cached"], rerun["completed"]) == (2, 0)
    assert pd.read_parquet(out / "annotations.parquet").equals(annotations)


def test_model_path_ending_in_gguf_runs_that_file_without_the_notice(tmp_path):
    model = tmp_path / "my-model.gguf"
    model.symlink_to(bundled_model_path())
    out = tmp_path / "run"
    result = melt(CORPUS, "--out", out, "--model", model, "--limit", "1", "--max-tokens", "200", "-q")
    assert result.returncode == 0, result.stderr
    assert ONE_LINE not in result.stderr
    assert json.loads((out / "run.json").read_text())["model"] == "my-model.gguf"


def test_missing_gguf_model_is_a_one_line_error(tmp_path):
    missing = tmp_path / "absent.gguf"
    result = melt(CORPUS, "--out", tmp_path / "run", "--model", missing, "-q")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {missing}: the model file does not exist (give --model the path of a .gguf file)"
    ]


def test_another_gguf_under_the_same_name_is_another_configuration(tmp_path):
    first, second = tmp_path / "a" / "model.gguf", tmp_path / "b" / "model.gguf"
    first.parent.mkdir()
    second.parent.mkdir()
    os.link(bundled_model_path(), first)
    shutil.copyfile(bundled_model_path(), second)
    with second.open("ab") as f:
        f.write(b"\0")  # same name, different file
    out = tmp_path / "run"
    args = ("--out", out, "--limit", "1", "--max-tokens", "16", "--temperature", "0", "-q")
    assert melt(CORPUS, "--model", first, *args).returncode in (0, 3)
    refused = melt(CORPUS, "--model", second, *args)
    assert refused.returncode == 2, refused.stderr
    assert "model file (its sha256)" in refused.stderr and "--force-reuse" in refused.stderr
    run_json = json.loads((out / "run.json").read_text())
    assert run_json["identity"]["backend"]["model"] == "model.gguf"
    assert len(run_json["identity"]["backend"]["model_sha256"]) == 64


def test_a_panel_runs_offline_on_the_transcripts_with_the_bundled_model(tmp_path):
    """The offline demo of distributions: 2 utterances, 2 annotators, a short reply (the label alone)."""
    bundled_model_path()
    out = tmp_path / "run"
    args = (
        "--out",
        out,
        "--panel",
        "scaling-ambiguity",
        "--annotators",
        "2",
        "--limit",
        "2",
        "--max-tokens",
        "24",
    )
    result = melt(CORPUS, *args, "-q")
    assert result.returncode == 0, result.stderr
    votes = pd.read_parquet(out / "votes.parquet")
    assert len(votes) == 4 and set(votes["annotator"]) == {0, 1}
    assert votes.groupby("annotator")["temperature"].first().nunique() == 2
    assert set(votes["status"]) <= {"ok", "invalid"}
    labels = {"anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"}
    assert set(votes.loc[votes["status"] == "ok", "label"]) <= labels
    annotations = pd.read_parquet(out / "annotations.parquet")
    for row in annotations[annotations["status"] == "ok"].itertuples():
        assert sum(json.loads(row.distribution).values()) == pytest.approx(1.0)
        assert row.emotion in labels
    run = json.loads((out / "run.json").read_text())
    assert run["backend"] == "local" and run["panel"]["annotators"] == 2
    assert run["identity"]["schema"] == "label" and run["identity"]["prompt"] == "panel"
    assert "Fleiss' κ of the panel" in melt(CORPUS, *args).stdout  # the rerun's summary, from the store
