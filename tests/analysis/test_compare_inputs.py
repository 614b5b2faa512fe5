"""`melt compare` on inputs that leave nothing to compare or cannot be read: one line, exit 2, and never NaN in
summary.json (which must stay valid JSON)."""

from __future__ import annotations

import json

import pytest

from melt.analysis.compare import compare_labels, write_comparison


def strict_json(text: str):
    def refuse(constant: str):
        raise AssertionError(f"{constant} in JSON")

    return json.loads(text, parse_constant=refuse)


def one_line(result, *words: str) -> None:
    assert result.code == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_zero_label_pairs_is_an_error_from_the_cli(melt_cli, tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("id,text,label,llm_label\na,x,joy,\nb,y,,anger\n")
    result = melt_cli("compare", path, "--out", tmp_path / "cmp")
    one_line(result, "no utterance has both", "2 left out")
    assert not (tmp_path / "cmp" / "summary.json").exists()


def test_undefined_measures_are_null_in_summary_json(tmp_path):
    empty = compare_labels(["joy", None], [None, "anger"])
    summary = write_comparison(empty, tmp_path / "cmp")
    written = strict_json((tmp_path / "cmp" / "summary.json").read_text())
    assert written["n"] == 0 and written["missing"] == 2
    assert written["change_rate"] is None and written["cohen_kappa"] is None
    assert written["krippendorff_alpha"] is None and summary["cohen_kappa"] is None
    assert "undefined" in (tmp_path / "cmp" / "report.md").read_text()


@pytest.mark.parametrize(
    ("labels", "says"),
    [("joy,Joy", "repeat"), ("joy", "at least two"), ("joy, ,anger", "non-empty"), (",", "at least two")],
)
def test_a_bad_label_set_is_a_clear_error(melt_cli, tmp_path, labels, says):
    path = tmp_path / "t.csv"
    path.write_text("id,text,label,llm_label\na,x,joy,joy\n")
    one_line(melt_cli("compare", path, "--labels", labels, "--out", tmp_path / "cmp"), "--labels", says)


@pytest.mark.parametrize(
    ("run_json", "says"),
    [
        ('{"corpus": null}', "names no corpus table"),
        ('{"corpus": 5}', "must be the path of a table"),
        ('{"corpus": ""}', "must be the path of a table"),
        ('{"corpus": ["a.csv"]}', "must be the path of a table"),
        ('{"model": "x"}', "no 'corpus' entry"),
        ('["corpus"]', "no 'corpus' entry"),
        ("{not json", "not readable JSON"),
        ('{"corpus": "."}', "not a table file"),
    ],
)
def test_a_run_json_with_an_odd_corpus_entry_is_a_clear_error(melt_cli, tmp_path, run_json, says):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(run_json)
    (run / "annotations.csv").write_text("id,status,emotion\na,ok,joy\n")
    one_line(melt_cli("compare", run, "--out", tmp_path / "cmp"), "run.json", says)


def test_a_relative_corpus_entry_is_read_from_the_run_folder(melt_cli, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "corpus.csv").write_text("id,text,label\na,x,joy\nb,y,anger\n")
    (run / "run.json").write_text('{"corpus": "corpus.csv"}')
    (run / "annotations.csv").write_text("id,status,emotion\na,ok,joy\nb,ok,joy\n")
    result = melt_cli("compare", run, "--out", tmp_path / "cmp")
    assert result.code == 0, result.stderr
    assert strict_json((tmp_path / "cmp" / "summary.json").read_text())["changed"] == 1
