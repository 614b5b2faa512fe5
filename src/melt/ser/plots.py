"""PNG figures of the SER stage (matplotlib, Agg), written atomically."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from melt.corpus.schema import atomic_write


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: str | Path) -> Path:
    figure.tight_layout()
    return atomic_write(path, lambda tmp: figure.savefig(tmp, format="png"))


def training_curve(curve: pd.DataFrame, best_epoch: int, path: str | Path, title: str = "") -> Path:
    """Training and validation loss per epoch, and the validation score (UAR) on a second axis."""
    figure = _figure(6.0, 3.4)
    axes = figure.add_subplot()
    axes.plot(curve["epoch"], curve["train_loss"], label="training loss", color="tab:blue")
    if curve["val_loss"].notna().any():
        axes.plot(curve["epoch"], curve["val_loss"], label="validation loss", color="tab:orange")
    axes.set_xlabel("epoch")
    axes.set_ylabel("loss")
    lines, labels = axes.get_legend_handles_labels()
    if curve["val_score"].notna().any():
        score_axes = axes.twinx()
        score_axes.plot(curve["epoch"], curve["val_score"], label="validation UAR", color="tab:green")
        score_axes.set_ylabel("validation UAR")
        score_axes.set_ylim(0, 1)
        more_lines, more_labels = score_axes.get_legend_handles_labels()
        lines, labels = lines + more_lines, labels + more_labels
    axes.axvline(best_epoch, color="grey", linestyle=":", linewidth=1)
    axes.legend(lines, labels, fontsize=8, loc="upper right")
    axes.set_title(title or f"training curve (kept epoch {best_epoch})", fontsize=9)
    return _save(figure, path)


def layer_weights(
    weights: dict[str, Sequence[float]], path: str | Path, title: str = "learned layer weights"
) -> Path:
    """One line of softmax layer weights per model (layer 0 is the CNN/embedding output)."""
    figure = _figure(6.0, 3.0)
    axes = figure.add_subplot()
    for name, values in weights.items():
        axes.plot(range(len(values)), values, marker="o", markersize=3, label=name)
    from matplotlib.ticker import MaxNLocator

    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("layer (0 = CNN output)")
    axes.set_ylabel("weight")
    axes.set_title(title, fontsize=9)
    if len(weights) > 1:
        axes.legend(fontsize=7)
    return _save(figure, path)


def confusion(matrix: pd.DataFrame, path: str | Path, title: str = "") -> Path:
    """Counts with the reference (true label) as rows and the prediction as columns, recall shaded."""
    counts = matrix.to_numpy()
    figure = _figure(max(4.2, 1.4 + 0.6 * counts.shape[1]), max(3.2, 1.2 + 0.55 * counts.shape[0]))
    axes = figure.add_subplot()
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = counts / counts.sum(axis=1, keepdims=True)
    axes.imshow(np.nan_to_num(recall), cmap="Blues", vmin=0, vmax=1)
    axes.set_xticks(range(counts.shape[1]), list(matrix.columns), rotation=45, ha="right", fontsize=8)
    axes.set_yticks(range(counts.shape[0]), list(matrix.index), fontsize=8)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true label")
    axes.set_title(title, fontsize=9)
    for r in range(counts.shape[0]):
        for c in range(counts.shape[1]):
            colour = "white" if np.nan_to_num(recall[r, c]) > 0.5 else "black"
            axes.text(c, r, str(counts[r, c]), ha="center", va="center", color=colour, fontsize=8)
    return _save(figure, path)


def uar_bars(results: pd.DataFrame, path: str | Path, chance: dict[str, float] | None = None) -> Path:
    """Mean UAR ± std over seeds per test corpus (groups) and backbone × label source (bars)."""
    summary = (
        results.groupby(["test", "backbone", "labels"], sort=False)["uar"].agg(["mean", "std"]).reset_index()
    )
    tests = list(dict.fromkeys(summary["test"]))
    systems = list(dict.fromkeys(zip(summary["backbone"], summary["labels"], strict=True)))
    figure = _figure(max(5.0, 1.2 + 1.1 * len(tests) * max(1, len(systems)) / 2) + 1.8, 3.6)
    axes = figure.add_subplot()
    width = 0.8 / max(1, len(systems))
    for k, (backbone, labels) in enumerate(systems):
        rows = summary[(summary["backbone"] == backbone) & (summary["labels"] == labels)].set_index("test")
        means = [rows["mean"].get(t, np.nan) for t in tests]
        stds = [rows["std"].get(t, np.nan) for t in tests]
        axes.bar(
            np.arange(len(tests)) + (k - (len(systems) - 1) / 2) * width,
            means,
            width,
            yerr=np.nan_to_num(stds),
            capsize=2,
            label=f"{_short(backbone)} · {labels}",
        )
    if chance:
        for i, test in enumerate(tests):
            if test in chance:
                axes.hlines(chance[test], i - 0.45, i + 0.45, colors="grey", linestyles=":", linewidth=1)
    axes.set_xticks(range(len(tests)), tests)
    axes.set_ylabel("UAR (mean ± std over seeds)")
    axes.set_ylim(0, 1)
    _legend_beside(axes)
    axes.set_title("UAR per test corpus (dotted: chance)", fontsize=9)
    return _save(figure, path)


def _legend_beside(axes) -> None:
    """The legend right of the axes: inside, it hid the tallest bars (the best systems)."""
    axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)


def tertile_bars(results: pd.DataFrame, metric: str, path: str | Path) -> Path:
    """One panel per backbone and corpus: `metric` per tertile of human ambiguity (low, medium, high, all), one bar
    per target × DiME-Aug setting, mean ± std over seeds."""
    tertiles = ["low", "medium", "high", "all"]
    panels = list(dict.fromkeys(zip(results["backbone"], results["corpus"], strict=True)))
    systems = list(dict.fromkeys(zip(results["target"], results["dime"], strict=True)))
    figure = _figure(max(5.0, 1.5 + 1.3 * len(tertiles) * max(1, len(systems)) / 3) * len(panels) + 1.8, 3.6)
    width = 0.8 / max(1, len(systems))
    for number, (backbone, corpus) in enumerate(panels, start=1):
        axes = figure.add_subplot(1, len(panels), number)
        part = results[(results["backbone"] == backbone) & (results["corpus"] == corpus)]
        summary = part.groupby(["target", "dime", "tertile"], sort=False)[metric].agg(["mean", "std"])
        for k, (target, dime) in enumerate(systems):
            means = [summary["mean"].get((target, dime, t), np.nan) for t in tertiles]
            stds = [summary["std"].get((target, dime, t), np.nan) for t in tertiles]
            axes.bar(
                np.arange(len(tertiles)) + (k - (len(systems) - 1) / 2) * width,
                means,
                width,
                yerr=np.nan_to_num(stds),
                capsize=2,
                label=f"{target} · DiME {dime}",
            )
        axes.set_xticks(range(len(tertiles)), tertiles)
        axes.set_xlabel("tertile of human ambiguity")
        axes.set_ylabel({"jsd": "JSD (base 2) ↓", "bc": "Bhattacharyya coefficient ↑"}.get(metric, metric))
        top = float(np.nanmax(summary["mean"] + summary["std"].fillna(0))) if len(summary) else 1.0
        axes.set_ylim(0, 1 if metric == "bc" or not np.isfinite(top) else min(1.0, 1.25 * top))
        axes.set_title(f"{_short(backbone)} · {corpus}", fontsize=9)
        if number == len(panels):
            _legend_beside(axes)
    return _save(figure, path)


def _short(name: str) -> str:
    return Path(name).name if "/" in name else name
