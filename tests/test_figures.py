"""Figures people would put in a paper: every plot has a title and axis labels, count axes have integer ticks,
and the numbers of a 7 × 7 transition matrix of thousands fit their cells at a legible size. The real figures
are checked as they are saved (matplotlib's own savefig still writes them), so a plot that loses its title or
crams its numbers fails here."""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from melt.analysis.compare import compare_labels, write_comparison
from melt.corpus.labels import MELT_LABELS

COUNT_WORDS = ("utterances", "count", "raters", "answers", "items")


@pytest.fixture
def saved(monkeypatch):
    """The figures saved while the test runs, inspected just before matplotlib writes each of them."""
    figures: list[dict] = []
    original = Figure.savefig

    def savefig(self, *args, **kwargs):
        figures.append(inspect(self))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return figures


def inspect(figure: Figure) -> dict:
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    suptitle = figure._suptitle.get_text() if figure._suptitle is not None else ""
    axes = []
    for ax in figure.axes:
        colorbar = getattr(ax, "_colorbar", None) is not None
        if not ax.axison:
            continue
        texts = []
        if ax.images:
            rows, columns = ax.images[0].get_array().shape[:2]
            box = ax.get_window_extent(renderer)
            cell = (box.width / columns, box.height / rows)
            for text in ax.texts:
                extent = text.get_window_extent(renderer)
                texts.append((text.get_text(), text.get_fontsize(), extent.width, extent.height, cell))
        axes.append(
            {
                "colorbar": colorbar,
                "title": ax.get_title() or suptitle,
                "xlabel": ax.get_xlabel(),
                "ylabel": ax.get_ylabel(),
                "yticks": [t for t in ax.get_yticks() if ax.get_ylim()[0] <= t <= ax.get_ylim()[1]],
                "xticks": [t for t in ax.get_xticks() if min(ax.get_xlim()) <= t <= max(ax.get_xlim())],
                "texts": texts,
            }
        )
    return {"suptitle": suptitle, "axes": axes}


def check(figures: list[dict], expected: int) -> None:
    assert len(figures) == expected
    for figure in figures:
        for ax in figure["axes"]:
            label = ax["ylabel"]
            if ax["colorbar"]:
                if any(word in label for word in COUNT_WORDS):
                    assert all(float(t).is_integer() for t in ax["yticks"]), (label, ax["yticks"])
                continue
            assert ax["title"], figure
            assert ax["xlabel"] and ax["ylabel"], ax
            for ticks, name in ((ax["yticks"], ax["ylabel"]), (ax["xticks"], ax["xlabel"])):
                if any(word in name for word in COUNT_WORDS):
                    assert all(float(t).is_integer() for t in ticks), (name, ticks)
            for text, size, width, height, (cell_width, cell_height) in ax["texts"]:
                assert size >= 8, (text, size)
                assert width < 0.95 * cell_width and height < 0.95 * cell_height, (text, width, cell_width)


def test_compare_figures_on_the_published_labels(shared_data, saved, tmp_path):
    """MELD vs MELT's GPT-4o labels: 7 × 7 transitions with four-digit counts."""
    table = pd.read_csv(shared_data / "melt" / "meld_train.csv")
    comparison = compare_labels(
        table["Emotion"], table["llm_label"], reference_name="MELD", candidate_name="MELT"
    )
    assert comparison.transition().to_numpy().max() >= 1000
    write_comparison(comparison, tmp_path / "cmp", resamples=20)
    check(saved, expected=2)
    heat_map = [ax for ax in saved[0]["axes"] if ax["texts"]]
    assert len(heat_map) == 2 and all(len(ax["texts"]) == 49 for ax in heat_map)


def test_compare_figures_of_a_few_labels(saved, tmp_path):
    """Small counts (1–3) would get ticks at 0.5 steps without an integer locator."""
    write_comparison(
        compare_labels(["joy", "anger", "joy"], ["joy", "joy", "fear"]), tmp_path / "cmp", resamples=5
    )
    check(saved, expected=2)


def test_describe_figures(saved, tmp_path):
    from melt.corpus.describe import write_description
    from melt.corpus.schema import conform

    rng = np.random.default_rng(0)
    rows = []
    for i in range(24):
        raters = 1 + i % 3
        votes = {f"r{k}": {MELT_LABELS[int(rng.integers(4))]: 1.0} for k in range(raters)}
        rows.append(
            {
                "id": f"u{i}", "speaker": f"s{i % 4}", "label": MELT_LABELS[i % 4], "text": f"line {i}",
                "duration": 1.0 + i / 7, "votes": json.dumps(votes), "fold": i % 2, "corpus": "tiny",
            }
        )  # fmt: skip
    table = conform(pd.DataFrame(rows))
    written = write_description(table, tmp_path / "describe", source="corpus.parquet")
    assert written
    check(saved, expected=3)


def test_ambiguity_figures(saved, tmp_path):
    from melt.ambiguity import AmbiguityConfig, analyse_ambiguity, write_ambiguity

    rng = np.random.default_rng(1)
    rows = []
    for i in range(42):
        votes = {f"E{k}": {MELT_LABELS[i % 7] if rng.random() < 0.6 else MELT_LABELS[int(rng.integers(7))]: 1.0}
                 for k in range(2 + i % 3)}  # fmt: skip
        rows.append({"id": f"u{i}", "speaker": f"s{i % 3}", "text": f"line {i}", "votes": json.dumps(votes)})
    result = analyse_ambiguity(pd.DataFrame(rows), None, AmbiguityConfig(seeds=[0]))
    write_ambiguity(result, tmp_path / "amb")
    assert saved
    check(saved, expected=len(saved))


def test_ser_and_acoustic_confusion_matrices_of_thousands(saved, tmp_path):
    from melt.acoustics.check import CLASSES, plot_confusion
    from melt.ser import plots

    rng = np.random.default_rng(2)
    matrix = pd.DataFrame(rng.integers(0, 9999, (7, 7)), index=list(MELT_LABELS), columns=list(MELT_LABELS))
    plots.confusion(matrix, tmp_path / "ser.png")
    counts = {r: {c: int(rng.integers(1000, 99999)) for c in CLASSES} for r in CLASSES}
    plot_confusion(counts, "pitch: description vs acoustic bin", tmp_path / "pitch.png")
    check(saved, expected=2)
    assert [len(ax["texts"]) for figure in saved for ax in figure["axes"]] == [49, len(CLASSES) ** 2]
