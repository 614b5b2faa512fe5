"""End-to-end: the real `melt ambiguity` command on a corpus with human votes and a panel's votes.parquet, every
output parsed and its numbers recomputed; bad input exits 2 with one line or is counted and reported."""

import json

import numpy as np
import pandas as pd
import pytest
from ambiguity_helpers import check_outputs, synthetic_corpus


def write_inputs(tmp_path, table, panel):
    corpus_file = tmp_path / "corpus.parquet"
    table.to_parquet(corpus_file)
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    if panel is not None:
        panel.to_parquet(run / "votes.parquet")
    return corpus_file, run


def run_ambiguity(melt_cli, tmp_path, table, panel, *extra):
    """Write the inputs, run the command, check every output; returns (result, summary)."""
    corpus_file, run = write_inputs(tmp_path, table, panel)
    out = tmp_path / "out"
    args = ["ambiguity", corpus_file, "--out", out, "--quiet", *extra]
    if panel is not None:
        args += ["--votes", run]
    result = melt_cli(*args)
    assert result.code == 0, result.stderr
    return result, out, corpus_file, (run / "votes.parquet" if panel is not None else None)


def test_end_to_end_with_a_panel(melt_cli, tmp_path):
    table, panel = synthetic_corpus()
    result, out, corpus_file, votes_file = run_ambiguity(melt_cli, tmp_path, table, panel, "--seeds", "3,4,5")
    summary = check_outputs(
        out, table, panel, corpus_file=corpus_file, votes_file=votes_file, seeds=(3, 4, 5)
    )
    assert summary["panel"]["annotators"] == 8
    assert summary["panel"]["status"]["invalid"] == int((panel["status"] == "invalid").sum())
    assert summary["human"]["off_set_labels"]["frustration"] > 0  # the corpus has off-set votes: counted
    assert "paper" in result.stdout and "split-half" in result.stdout
    assert "frustration" in result.stdout
    assert str(out / "report.html") in result.stdout


def test_synthetic_weight_and_classes_norm(melt_cli, tmp_path):
    table, panel = synthetic_corpus(n=40, annotators=5, seed=2)
    _, out, corpus_file, votes_file = run_ambiguity(
        melt_cli, tmp_path, table, panel,
        "--synthetic-weight", "0.25", "--entropy-norm", "classes", "--saturation-draws", "2",
    )  # fmt: skip
    summary = check_outputs(
        out, table, panel, corpus_file=corpus_file, votes_file=votes_file, synthetic_weight=0.25,
        saturation_draws=2,
    )  # fmt: skip
    assert summary["provenance"]["settings"]["entropy_norm"] == "classes"


def test_human_only_without_a_panel(melt_cli, tmp_path):
    table, _ = synthetic_corpus(n=30)
    result, out, corpus_file, _ = run_ambiguity(melt_cli, tmp_path, table, None)
    check_outputs(out, table, None, corpus_file=corpus_file, votes_file=None)
    assert "No synthetic source was given" in result.stdout
    assert "human raters: Fleiss' κ" in result.stdout


def test_a_csv_corpus_and_the_votes_file_itself(melt_cli, tmp_path):
    table, panel = synthetic_corpus(n=30, annotators=3)
    corpus_file = tmp_path / "corpus.csv"
    table.to_csv(corpus_file, index=False)
    votes_file = tmp_path / "panel.parquet"
    panel.to_parquet(votes_file)
    out = tmp_path / "out"
    result = melt_cli("ambiguity", corpus_file, "--votes", votes_file, "--out", out, "-q", "--seeds", "0")
    assert result.code == 0, result.stderr
    check_outputs(out, table, panel, corpus_file=corpus_file, votes_file=votes_file, seeds=(0,))


def test_problems_in_the_votes_are_counted_and_reported(melt_cli, tmp_path):
    table, panel = synthetic_corpus(n=45, annotators=4)
    ids = table["id"].tolist()
    # A panel that gave no valid vote for one utterance, off-set labels, an id the corpus lacks, and a corpus
    # utterance the panel never saw; in the corpus: one utterance without votes, one with weights not summing to 1.
    panel.loc[panel["id"] == ids[0], ["status", "label"]] = ["failed", None]
    panel.loc[(panel["id"] == ids[1]) & (panel["annotator"] == 0), ["status", "label"]] = ["ok", "contempt"]
    panel = panel[panel["id"] != ids[2]]
    stranger = panel.iloc[:1].assign(id="not-in-corpus")
    panel = pd.concat([panel, stranger], ignore_index=True)
    table.loc[3, "votes"] = "{}"
    table.loc[4, "votes"] = json.dumps({"a": {"anger": 2.0}, "b": {"joy": 0.2, "sadness": 0.2}})
    result, out, corpus_file, votes_file = run_ambiguity(melt_cli, tmp_path, table, panel, "--seeds", "0,1")
    summary = check_outputs(out, table, panel, corpus_file=corpus_file, votes_file=votes_file, seeds=(0, 1))
    panel_counts, human_counts = summary["panel"], summary["human"]
    assert panel_counts["utterances_without_valid_votes"] == 1
    assert panel_counts["off_set_labels"] == {"contempt": 1}
    assert panel_counts["ids_not_in_corpus"] == 1 and panel_counts["ids_not_in_corpus_examples"] == [
        "not-in-corpus"
    ]
    assert panel_counts["corpus_ids_not_in_panel"] == 1
    assert human_counts["utterances_without_votes"] == 1
    assert human_counts["raters_renormalised"] >= 2
    assert summary["scoring"]["paper"]["left_out_without_valid_panel_votes"] == 2  # ids[0] and ids[2]
    assert summary["scoring"]["paper"]["left_out_without_human_votes"] == 1
    for phrase in ("got no valid panel vote", "contempt 1", "not-in-corpus", "have no row in the panel votes",
                   "have no human votes", "rescaled to 1"):  # fmt: skip
        assert phrase in result.stdout.replace("\n", " "), phrase
        assert any(phrase in note for note in summary["notes"]), phrase
    distributions = pd.read_parquet(out / "distributions.parquet").set_index("id")
    assert distributions.loc[ids[0], "panel_votes"] == 0
    assert np.isnan(distributions.loc[ids[0], "synthetic_anger"])  # undefined, not a silent zero
    assert pd.isna(distributions.loc[ids[3], "tertile"])


def one_line_error(result, *fragments):
    assert result.code == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.parametrize(
    ("edit", "fragments"),
    [
        (lambda t: t.drop(columns=["votes"]), ["corpus.parquet", "no 'votes' column"]),
        (lambda t: t.assign(votes="{}"), ["no human votes on the label set in any of the 12 rows"]),
        (
            lambda t: t.assign(votes=['{"a": "joy"}'] * 11 + ['{"a": joy}']),
            ["row 12", "'votes'", "votes must be JSON"],
        ),
        (
            lambda t: t.assign(votes=['{"a": {"joy": -1}}'] * 12),
            ["row 1", "must be a finite number >= 0, found -1"],
        ),
    ],
)
def test_bad_corpus_votes_exit_2_with_one_line(melt_cli, tmp_path, edit, fragments):
    table, _ = synthetic_corpus(n=12)
    corpus_file, _ = write_inputs(tmp_path, edit(table), None)
    one_line_error(melt_cli("ambiguity", corpus_file, "--out", tmp_path / "out"), *fragments)


def test_bad_panel_and_settings_exit_2_with_one_line(melt_cli, tmp_path):
    table, panel = synthetic_corpus(n=12, annotators=2)
    corpus_file, run = write_inputs(tmp_path, table, panel)
    out = tmp_path / "out"
    one_line_error(melt_cli("ambiguity", corpus_file, "--votes", tmp_path, "--out", out), "no votes.parquet")
    panel.drop(columns=["status"]).to_parquet(run / "votes.parquet")
    one_line_error(
        melt_cli("ambiguity", corpus_file, "--votes", run, "--out", out), "missing column(s) ['status']"
    )
    panel.assign(id="elsewhere/" + panel["id"]).to_parquet(run / "votes.parquet")
    one_line_error(melt_cli("ambiguity", corpus_file, "--votes", run, "--out", out), "none of the 12 ids")
    (run / "votes.parquet").write_bytes(b"PAR1 not really")
    one_line_error(melt_cli("ambiguity", corpus_file, "--votes", run, "--out", out), "not a readable Parquet")
    for args, fragment in (
        (["--entropy-norm", "bits"], "--entropy-norm"),
        (["--synthetic-weight", "-1"], "synthetic_weight"),
        (["--seeds", "a,b"], "--seeds"),
        (["--labels", "joy"], "at least two non-empty labels"),
        (["--saturation-draws", "0"], "saturation_draws"),
    ):
        one_line_error(melt_cli("ambiguity", corpus_file, "--out", out, *args), fragment)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    one_line_error(
        melt_cli("ambiguity", corpus_file, "--out", blocker / "out"), "cannot create the --out folder"
    )


def test_settings_from_yaml_with_flags_on_top(melt_cli, tmp_path):
    table, panel = synthetic_corpus(n=30, annotators=3)
    corpus_file, run = write_inputs(tmp_path, table, panel)
    config = tmp_path / "ambiguity.yaml"
    config.write_text("labels: [anger, joy, neutral, sadness]\nseeds: [7, 8]\nsynthetic_weight: 2\n")
    out = tmp_path / "out"
    result = melt_cli(
        "ambiguity", corpus_file, "--votes", run, "--config", config, "--seeds", "9", "-q", "--out", out
    )
    assert result.code == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["labels"] == ["anger", "joy", "neutral", "sadness"]
    assert (
        summary["provenance"]["settings"]["seeds"] == [9]
        and summary["provenance"]["settings"]["synthetic_weight"] == 2
    )
    from melt.corpus.labels import LabelSet

    four = LabelSet.from_labels(["anger", "joy", "neutral", "sadness"])
    check_outputs(
        out, table, panel, corpus_file=corpus_file, votes_file=run / "votes.parquet", labels=four,
        synthetic_weight=2.0, seeds=(9,),
    )  # fmt: skip
    # Fear, disgust and surprise are outside this set: dropped and counted per source.
    assert set(summary["human"]["off_set_labels"]) >= {"fear", "disgust", "surprise"}
    assert set(summary["panel"]["off_set_labels"]) >= {"fear", "disgust", "surprise"}
    config.write_text("entropy_norm: [present]\n")
    one_line_error(
        melt_cli("ambiguity", corpus_file, "--config", config, "--out", out), "ambiguity.yaml", "entropy_norm"
    )


def test_an_output_that_cannot_be_written_exits_2(melt_cli, tmp_path):
    table, _ = synthetic_corpus(n=12)
    corpus_file, _ = write_inputs(tmp_path, table, None)
    out = tmp_path / "out"
    (out / "metrics.csv").mkdir(parents=True)  # a folder where the file should go
    one_line_error(
        melt_cli("ambiguity", corpus_file, "--out", out, "-q"), "metrics.csv: cannot write the outputs"
    )
