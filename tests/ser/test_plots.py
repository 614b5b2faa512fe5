"""The report's figures: the legend never hides a bar."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from melt.ser import plots


def _drawn(monkeypatch, draw):
    """The figure `draw` saves, laid out and drawn as it is written."""
    figures = []

    def keep(figure, path):
        figures.append(figure)
        figure.tight_layout()
        figure.canvas.draw()
        return path

    monkeypatch.setattr(plots, "_save", keep)
    draw()
    return figures[0]


def _legend_hides_no_bar(figure) -> None:
    legends = [a.get_legend() for a in figure.axes if a.get_legend() is not None] + list(figure.legends)
    assert legends
    bars = [p for a in figure.axes for p in a.patches]
    assert bars
    for legend, bar in itertools.product(legends, bars):
        assert not legend.get_window_extent().overlaps(bar.get_window_extent()), bar


def test_uar_bars_legend_hides_no_bar(monkeypatch, tmp_path):
    """High UARs (the tall bars a good backbone gives) under a legend drawn inside the axes were hidden."""
    rows = [
        {"backbone": b, "labels": lab, "test": t, "seed": s, "uar": u + 0.02 * s}
        for (b, lab), base in zip(
            itertools.product(["tiny-wavlm", "egemaps"], ["human", "llm"]),
            (0.3, 0.33, 0.92, 0.72),
            strict=True,
        )
        for t, u in (("ravdess", base), ("tess", min(0.96, base + 0.3)), ("in_domain", base - 0.05))
        for s in (0, 1)
    ]
    figure = _drawn(
        monkeypatch,
        lambda: plots.uar_bars(
            pd.DataFrame(rows), tmp_path / "uar.png", chance={"ravdess": 1 / 3, "tess": 0.5}
        ),
    )
    _legend_hides_no_bar(figure)


@pytest.mark.parametrize("metric", ["jsd", "bc"])
def test_tertile_bars_legend_hides_no_bar(monkeypatch, tmp_path, metric):
    rng = np.random.default_rng(0)
    rows = [
        {"backbone": "tiny-wavlm", "corpus": "graded", "target": t, "dime": d, "seed": s, "tertile": q,
         "jsd": 0.2 + 0.1 * rng.random(), "bc": 0.85 + 0.1 * rng.random()}
        for t in ("human", "synthetic", "combined") for d in ("without", "with") for s in (0, 1)
        for q in ("low", "medium", "high", "all")
    ]  # fmt: skip
    figure = _drawn(monkeypatch, lambda: plots.tertile_bars(pd.DataFrame(rows), metric, tmp_path / "t.png"))
    _legend_hides_no_bar(figure)
