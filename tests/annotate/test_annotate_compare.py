"""`melt compare RUN_DIR`: a run folder joined to its corpus table, human label vs the LLM's emotion."""

import json

from annotate_helpers import fast_config

from melt.annotate import run_annotation
from melt.corpus.schema import read_table
from openai_server import expected_emotion


def test_compare_a_run_directory_against_its_corpus(server, write_corpus, tmp_path, melt_cli):
    texts = [f"Line number {i}, said with feeling." for i in range(10)] + [
        "This one stays off-label [[offlabel-always]]"
    ]
    corpus = write_corpus(texts)
    run_dir = tmp_path / "run"
    run_annotation(corpus, fast_config(server), run_dir)

    result = melt_cli("compare", run_dir, "--out", tmp_path / "cmp")
    assert result.code == 0, result.stderr
    summary = json.loads((tmp_path / "cmp" / "summary.json").read_text())
    assert (summary["reference"], summary["candidate"]) == ("label", "emotion")
    # The invalid answer has no emotion: left out, not guessed.
    assert summary["n"] == 10 and summary["missing"] == 1
    human = read_table(corpus)["label"].tolist()[:10]
    llm = [expected_emotion(t) for t in texts[:10]]
    assert summary["changed"] == sum(h != e for h, e in zip(human, llm, strict=True))
    assert summary["counts"]["candidate"] == {
        label: llm.count(label) for label in summary["counts"]["candidate"]
    }
    assert (tmp_path / "cmp" / "report.html").exists()


def test_compare_a_run_whose_corpus_moved_says_where_the_path_came_from(
    server, write_corpus, tmp_path, melt_cli
):
    corpus = write_corpus(["A line that will lose its corpus."])
    run_annotation(corpus, fast_config(server), tmp_path / "run")
    corpus.rename(tmp_path / "elsewhere.parquet")
    result = melt_cli("compare", tmp_path / "run", "--out", tmp_path / "cmp")
    assert result.code == 2 and "run.json" in result.stderr and str(corpus) in result.stderr
