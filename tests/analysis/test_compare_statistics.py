"""`melt compare`'s statistics, intervals and report, checked against independent implementations and by parsing
what it writes (no snapshots): they fail if a statistic, an interval, a column or the provenance goes missing."""

from __future__ import annotations

import hashlib
import json
from html.parser import HTMLParser

import krippendorff
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import (
    accuracy_score,
    cohen_kappa_score,
    f1_score,
    precision_recall_fscore_support,
    recall_score,
)

from melt.analysis import metrics
from melt.analysis.compare import INTERVAL_STATISTICS, bootstrap, compare_labels, write_comparison
from melt.corpus.labels import MELT_LABELS


class Tables(HTMLParser):
    """Every <table> of a page as a list of rows of cell texts, the header row first; <h2> titles in order."""

    def __init__(self, page: str):
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.titles: list[str] = []
        self._cell: list[str] | None = None
        self._title: list[str] | None = None
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "h2":
            self._title = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell))
            self._cell = None
        elif tag == "h2" and self._title is not None:
            self.titles.append("".join(self._title))
            self._title = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._title is not None:
            self._title.append(data)

    def find(self, *header: str) -> list[list[str]]:
        return next(t for t in self.tables if t and all(h in t[0] for h in header))


def random_pairs(seed: int, n: int = 400, classes: int = 5) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(seed)
    labels = MELT_LABELS[:classes]
    reference = rng.choice(labels, size=n, p=np.linspace(3, 1, classes) / np.linspace(3, 1, classes).sum())
    keep = rng.random(n) < 0.6
    candidate = np.where(keep, reference, rng.choice(labels, size=n))
    return reference.tolist(), candidate.tolist()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pair_statistics_match_independent_implementations(seed):
    reference, candidate = random_pairs(seed)
    matrix = metrics.confusion_matrix(reference, candidate, list(MELT_LABELS)).to_numpy()
    got = metrics.pair_statistics(matrix)
    present = sorted(set(reference))
    assert got["accuracy"] == pytest.approx(accuracy_score(reference, candidate))
    assert got["cohen_kappa"] == pytest.approx(cohen_kappa_score(reference, candidate))
    codes = {label: i for i, label in enumerate(MELT_LABELS)}
    data = np.array([[codes[r] for r in reference], [codes[c] for c in candidate]])
    assert got["krippendorff_alpha"] == pytest.approx(
        krippendorff.alpha(reliability_data=data, level_of_measurement="nominal")
    )
    assert got["uar"] == pytest.approx(recall_score(reference, candidate, labels=present, average="macro"))
    assert got["macro_f1"] == pytest.approx(f1_score(reference, candidate, average="macro"))
    # The batched form gives the same values per matrix.
    stacked = metrics.pair_statistics(np.stack([matrix, matrix.T]))
    assert stacked["cohen_kappa"][0] == pytest.approx(got["cohen_kappa"])
    assert stacked["accuracy"][1] == pytest.approx(got["accuracy"])


def test_per_class_scores_match_scikit_learn():
    reference, candidate = random_pairs(4)
    summary = compare_labels(reference, candidate).summary(resamples=50)
    labels = [label for label in MELT_LABELS if label in set(reference) | set(candidate)]
    precision, recall, f1, support = precision_recall_fscore_support(
        reference, candidate, labels=labels, zero_division=np.nan
    )
    for i, label in enumerate(labels):
        row = summary["per_class"][label]
        assert row["reference"] == support[i]
        assert row["precision"] == pytest.approx(precision[i])
        assert row["recall"] == pytest.approx(recall[i]) and row["f1"] == pytest.approx(f1[i])
    unused = [label for label in MELT_LABELS if label not in labels]
    for label in unused:  # a class neither source uses has no precision, recall or F1: null, never NaN
        assert summary["per_class"][label]["f1"] is None


def test_bootstrap_is_seeded_and_equals_resampling_the_pairs():
    reference, candidate = random_pairs(5, n=300)
    matrix = metrics.confusion_matrix(reference, candidate, list(MELT_LABELS)).to_numpy()
    first = bootstrap(matrix, resamples=2000, seed=3)
    assert first == bootstrap(matrix, resamples=2000, seed=3)
    assert first != bootstrap(matrix, resamples=2000, seed=4)
    point = metrics.pair_statistics(matrix)
    for name in INTERVAL_STATISTICS:
        assert first[name]["low"] <= point[name] <= first[name]["high"], name
        assert first[name]["undefined_resamples"] == 0
    # The multinomial draw of the cells is the bootstrap over pairs: the same interval as drawing row indices.
    rng = np.random.default_rng(11)
    reference, candidate = np.array(reference), np.array(candidate)
    kappas = []
    for _ in range(2000):
        rows = rng.integers(0, len(reference), len(reference))
        kappas.append(cohen_kappa_score(reference[rows], candidate[rows]))
    low, high = np.quantile(kappas, [0.025, 0.975])
    assert first["cohen_kappa"]["low"] == pytest.approx(low, abs=0.02)
    assert first["cohen_kappa"]["high"] == pytest.approx(high, abs=0.02)


def test_published_melt_train_statistics_intervals_report_and_provenance(shared_data, melt_cli, tmp_path):
    source = shared_data / "melt" / "meld_train.csv"
    out = tmp_path / "cmp"
    done = melt_cli("compare", source, "-r", "Emotion", "-c", "llm_label", "--out", out)
    assert done.code == 0, done.stderr
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    table = pd.read_csv(source)
    reference, candidate = table["Emotion"].tolist(), table["llm_label"].tolist()

    assert summary["accuracy"] == pytest.approx(accuracy_score(reference, candidate))
    assert summary["cohen_kappa"] == pytest.approx(cohen_kappa_score(reference, candidate))
    assert summary["uar"] == pytest.approx(recall_score(reference, candidate, average="macro"))
    assert summary["macro_f1"] == pytest.approx(f1_score(reference, candidate, average="macro"))
    assert summary["missing"] == 0 and summary["missing_by_source"] == {
        "reference": 0,
        "candidate": 0,
        "both": 0,
    }
    assert set(summary["per_class"]) == set(MELT_LABELS)

    intervals = summary["intervals"]
    assert intervals["resamples"] == 1000 and intervals["seed"] == 0 and intervals["confidence"] == 0.95
    for name in INTERVAL_STATISTICS:
        interval = intervals[name]
        assert interval["low"] < summary[name] < interval["high"], name
        assert interval["high"] - interval["low"] < 0.05, name  # 7,024 pairs: narrow
    assert all(summary["reading"][name] for name in ("cohen_kappa", "krippendorff_alpha", "uar", "macro_f1"))

    made = summary["provenance"]
    assert made["command"].startswith("melt compare ") and "--reference Emotion" not in made["command"]
    assert "-r Emotion" in made["command"]
    assert made["inputs"]["table"]["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert made["settings"]["bootstrap_resamples"] == 1000 and made["melt_version"]

    disagreements = pd.read_csv(out / "disagreements.csv")
    assert len(disagreements) == 3261
    assert list(disagreements.columns) == ["id", "text", "Emotion (reference)", "llm_label (candidate)"]
    assert (disagreements["Emotion (reference)"] != disagreements["llm_label (candidate)"]).all()
    assert disagreements["id"].iloc[0].endswith(".wav")  # the file's own ids (its filename column)

    page = Tables((out / "report.html").read_text(encoding="utf-8"))
    statistics = page.find("statistic", "value", "95% CI", "how to read it")
    rows = {row[0]: row for row in statistics[1:]}
    for shown in ("Cohen's κ", "Krippendorff's α", "UAR", "macro-F1", "change rate"):
        assert rows[shown][2] and "–" in rows[shown][2] and len(rows[shown][3]) > 40, shown
    per_class = page.find("class", "precision", "recall", "F1")
    assert [row[0] for row in per_class[1:]] == list(MELT_LABELS)
    for table_rows in page.tables:  # column names say which source is which: no repeated header
        assert len(set(table_rows[0])) == len(table_rows[0]), table_rows[0]
    listed = page.find("id", "text", "Emotion (reference)", "llm_label (candidate)")
    assert len(listed) - 1 == 2000  # the first 2,000 of 3,261; all in disagreements.csv
    assert "Disagreements" in page.titles and page.titles[-1] == "How this was made"
    inputs = page.find("input", "path", "bytes", "sha256")
    assert inputs[1][3] == made["inputs"]["table"]["sha256"]


def test_one_pair_and_all_equal_labels_are_undefined_not_errors(tmp_path):
    one = compare_labels(["joy"], ["anger"], ids=["u1"], texts=["Só uma frase — ünïcode ✓"])
    summary = write_comparison(one, tmp_path / "one")
    assert summary["n"] == 1 and summary["change_rate"] == 1.0
    assert summary["cohen_kappa"] == 0.0  # p_o = p_e = 0
    page = (tmp_path / "one" / "report.html").read_text(encoding="utf-8")
    assert "Only 1 pairs" in page and "Só uma frase — ünïcode ✓" in page

    same = compare_labels(["joy"] * 20, ["joy"] * 20)
    summary = write_comparison(same, tmp_path / "same")
    assert summary["cohen_kappa"] is None and summary["krippendorff_alpha"] is None
    assert summary["intervals"]["cohen_kappa"] is None and summary["change_rate"] == 0.0
    assert summary["accuracy"] == 1.0 and summary["uar"] == 1.0
    text = (tmp_path / "same" / "summary.json").read_text()
    assert "NaN" not in text
    rows = {
        row[0]: row for row in Tables((tmp_path / "same" / "report.html").read_text()).find("statistic")[1:]
    }
    assert rows["Cohen's κ"][1] == "undefined" and rows["Cohen's κ"][2] == "undefined"
    assert (
        "The two sources agree on every compared utterance." in (tmp_path / "same" / "report.md").read_text()
    )


def test_left_out_rows_say_which_side_lacked_a_label(tmp_path):
    comparison = compare_labels(
        ["joy", None, "anger", None, "fear"], ["joy", "anger", None, None, "sadness"], candidate_name="llm"
    )
    summary = write_comparison(comparison, tmp_path / "cmp", resamples=20)
    assert summary["missing"] == 3
    assert summary["missing_by_source"] == {"reference": 1, "candidate": 1, "both": 1}
    markdown = (tmp_path / "cmp" / "report.md").read_text()
    assert (
        "1 without a reference label (reference); 1 without a llm label (candidate); 1 without either"
        in markdown
    )
    # ids default to the row numbers of the input, so a disagreement can be found again
    assert pd.read_csv(tmp_path / "cmp" / "disagreements.csv")["id"].tolist() == [5]


def test_huge_texts_are_cut_in_the_report_but_whole_in_the_csv(tmp_path):
    huge = "ä" * 300_000
    comparison = compare_labels(["joy", "anger"], ["anger", "anger"], ids=["a", "b"], texts=[huge, "short"])
    write_comparison(comparison, tmp_path / "cmp", resamples=10)
    page = (tmp_path / "cmp" / "report.html").read_text(encoding="utf-8")
    assert huge not in page and len(page) < 200_000
    assert pd.read_csv(tmp_path / "cmp" / "disagreements.csv")["text"].iloc[0] == huge


def test_api_call_is_recorded_when_not_run_from_the_command_line(tmp_path):
    summary = write_comparison(compare_labels(["joy", "anger"], ["joy", "joy"]), tmp_path / "cmp")
    command = summary["provenance"]["command"]
    assert command.startswith("melt.analysis.compare.write_comparison(<Comparison reference vs candidate")
