"""Compare two label sources over the same utterances: counts, transitions, change rate and agreement."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from melt.analysis import metrics
from melt.analysis.report import Section, write_report
from melt.corpus.labels import MELT_LABEL_SET, LabelSet
from melt.corpus.schema import atomic_write


@dataclass
class Comparison:
    reference_name: str
    candidate_name: str
    reference: list[str]
    candidate: list[str]
    #: rows left out because either label was missing
    missing: int
    labels: LabelSet

    @property
    def n(self) -> int:
        return len(self.reference)

    @property
    def classes(self) -> list[str]:
        """The label set first, in its order, then labels outside it in order of first appearance."""
        extra = [x for x in dict.fromkeys(self.reference + self.candidate) if x not in self.labels.labels]
        return list(self.labels.labels) + extra

    @property
    def changed(self) -> int:
        return sum(r != c for r, c in zip(self.reference, self.candidate, strict=True))

    def counts(self) -> pd.DataFrame:
        table = pd.DataFrame(
            {
                self.reference_name: pd.Series(self.reference).value_counts(),
                self.candidate_name: pd.Series(self.candidate).value_counts(),
            }
        )
        return table.reindex(self.classes).fillna(0).astype(int).rename_axis("label")

    def transition(self) -> pd.DataFrame:
        return metrics.confusion_matrix(self.reference, self.candidate, self.classes)

    def summary(self) -> dict:
        counts = self.counts()
        off_reference = self.labels.off_label_counts(self.reference)
        off_candidate = self.labels.off_label_counts(self.candidate)
        off_all = dict(off_reference)
        for label, count in off_candidate.items():
            off_all[label] = off_all.get(label, 0) + count
        transition = self.transition()
        return {
            "reference": self.reference_name,
            "candidate": self.candidate_name,
            "n": self.n,
            "missing": self.missing,
            "changed": self.changed,
            # Undefined measures (no pairs, a single class) are None: JSON null, never NaN.
            "change_rate": self.changed / self.n if self.n else None,
            "counts": {
                "reference": {k: int(v) for k, v in counts[self.reference_name].items()},
                "candidate": {k: int(v) for k, v in counts[self.candidate_name].items()},
            },
            "transition": {
                ref: {cand: int(transition.loc[ref, cand]) for cand in transition.columns}
                for ref in transition.index
            },
            "cohen_kappa": _defined(metrics.cohen_kappa(self.reference, self.candidate, self.classes)),
            "krippendorff_alpha": _defined(
                metrics.krippendorff_alpha_nominal(
                    [[r, c] for r, c in zip(self.reference, self.candidate, strict=True)]
                )
            ),
            "off_label": off_all,
            "off_label_by_source": {"reference": off_reference, "candidate": off_candidate},
            "label_set": list(self.labels.labels),
        }


def _defined(value: float) -> float | None:
    return None if math.isnan(value) else value


def _shown(value: float | None, form: str = "{:.4f}") -> str:
    return "undefined" if value is None else form.format(value)


def compare_labels(
    reference: Sequence[object],
    candidate: Sequence[object],
    *,
    reference_name: str = "reference",
    candidate_name: str = "candidate",
    labels: LabelSet = MELT_LABEL_SET,
) -> Comparison:
    """Normalise both sources with `labels` and pair them up; pairs with a missing label are counted and left out."""
    ref = [labels.normalize(x) for x in reference]
    cand = [labels.normalize(x) for x in candidate]
    if len(ref) != len(cand):
        raise ValueError(f"label sources differ in length: {len(ref)} vs {len(cand)}")
    pairs = [(r, c) for r, c in zip(ref, cand, strict=True) if r is not None and c is not None]
    return Comparison(
        reference_name=reference_name,
        candidate_name=candidate_name,
        reference=[r for r, _ in pairs],
        candidate=[c for _, c in pairs],
        missing=len(ref) - len(pairs),
        labels=labels,
    )


def plot_transition(comparison: Comparison, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = comparison.transition()
    rows = counts.sum(axis=1).replace(0, 1)
    normalised = counts.div(rows, axis=0)
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.6))
    for ax, data, title, fmt in (
        (axes[0], counts, "counts", "{:d}"),
        (axes[1], normalised, "row-normalised (share of each reference label)", "{:.2f}"),
    ):
        image = ax.imshow(data.to_numpy(), cmap="Blues")
        ax.set_xticks(range(len(data.columns)), data.columns, rotation=45, ha="right")
        ax.set_yticks(range(len(data.index)), data.index)
        ax.set_xlabel(comparison.candidate_name)
        ax.set_ylabel(comparison.reference_name)
        ax.set_title(title)
        peak = data.to_numpy().max() or 1
        for i in range(data.shape[0]):
            for j in range(data.shape[1]):
                value = data.iat[i, j]
                ax.text(
                    j,
                    i,
                    fmt.format(value),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if value > 0.6 * peak else "black",
                )
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle(f"{comparison.reference_name} → {comparison.candidate_name} (n = {comparison.n})")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path


def plot_distribution(comparison: Comparison, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = comparison.counts()
    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.4
    positions = range(len(counts))
    for offset, column in ((-width / 2, comparison.reference_name), (width / 2, comparison.candidate_name)):
        bars = ax.bar([p + offset for p in positions], counts[column], width, label=column)
        ax.bar_label(bars, fontsize=8)
    ax.set_xticks(list(positions), counts.index, rotation=30, ha="right")
    ax.set_ylabel("utterances")
    ax.set_title(f"Label counts (n = {comparison.n})")
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path


def comparison_section(comparison: Comparison, summary: dict, out_dir: Path) -> Section:
    """The report section of a comparison; writes its two figures into `out_dir`."""
    transition_png = plot_transition(comparison, out_dir / "transition.png")
    distribution_png = plot_distribution(comparison, out_dir / "distribution.png")
    measures = {
        "utterances": str(summary["n"]),
        "left out (label missing)": str(summary["missing"]),
        "changed": str(summary["changed"]),
        "change rate": _shown(summary["change_rate"]),
        "Cohen's κ": _shown(summary["cohen_kappa"]),
        "Krippendorff's α": _shown(summary["krippendorff_alpha"]),
    }
    agreement = pd.DataFrame(
        {"value": list(measures.values())}, index=pd.Index(list(measures), name="measure")
    )
    paragraphs = [
        f"{summary['changed']} of {summary['n']} utterances ({_shown(summary['change_rate'], '{:.2%}')}) carry a different label "
        f"in {comparison.candidate_name} than in {comparison.reference_name}."
    ]
    if summary["off_label"]:
        listed = ", ".join(f"{k} ({v})" for k, v in summary["off_label"].items())
        paragraphs.append(f"Labels outside the label set, kept as they are: {listed}.")
    return Section(
        title=f"{comparison.reference_name} vs {comparison.candidate_name}",
        paragraphs=paragraphs,
        tables={
            "Agreement": agreement,
            "Label counts": comparison.counts(),
            f"Transitions (rows: {comparison.reference_name}, columns: {comparison.candidate_name})": (
                comparison.transition().rename_axis(
                    index=f"{comparison.reference_name} → {comparison.candidate_name}"
                )
            ),
        },
        figures={"Transition matrix": transition_png, "Label distribution": distribution_png},
    )


def write_comparison(comparison: Comparison, out_dir: str | Path, title: str = "Label comparison") -> dict:
    """Write `summary.json`, `transition.png`, `distribution.png`, `report.md` and `report.html` into `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = comparison.summary()
    text = json.dumps(summary, indent=2, allow_nan=False)
    atomic_write(out_dir / "summary.json", lambda tmp: tmp.write_text(text, encoding="utf-8"))
    write_report(out_dir, title, [comparison_section(comparison, summary, out_dir)])
    return summary


def load_labelled(path: str | Path) -> tuple[pd.DataFrame, str, str]:
    """The table to compare and its default (reference, candidate) columns.

    A run directory of `melt annotate` is joined to the corpus table named in its `run.json`, giving the human
    `label` and the LLM's `emotion`; any other path is read as a table whose default columns are `label` and
    `llm_label` (a corpus table built from a published MELT file)."""
    from melt.corpus.schema import read_any, read_table
    from melt.errors import MeltError

    path = Path(path)
    if not path.is_dir():
        return read_any(path), "label", "llm_label"
    run_json = path / "run.json"
    if not run_json.exists():
        raise MeltError("a folder given to compare must be a run directory with run.json", file=path)
    corpus_path = _corpus_of_run(run_json)
    annotations_path = next(
        (p for p in (path / "annotations.parquet", path / "annotations.csv") if p.exists()), None
    )
    if annotations_path is None:
        raise MeltError("run directory has no annotations.parquet or annotations.csv yet", file=path)
    annotations = read_any(annotations_path)
    if "id" not in annotations.columns:
        raise MeltError("missing column 'id'", file=annotations_path, column="id")
    if not corpus_path.exists():
        raise MeltError(
            f"the run's corpus table {corpus_path} (named in run.json) is gone; move it back or edit run.json",
            file=run_json,
        )
    if not corpus_path.is_file():
        raise MeltError(
            f"the run's corpus {corpus_path} (named in run.json) is not a table file",
            file=run_json,
            column="corpus",
        )
    corpus = read_table(corpus_path)
    overlap = [c for c in annotations.columns if c in corpus.columns and c != "id"]
    joined = corpus.merge(annotations.drop(columns=overlap), on="id", how="inner")
    return joined, "label", "emotion"


def _corpus_of_run(run_json: Path) -> Path:
    """The corpus table a run's run.json names: an absolute path, or one relative to the run folder."""
    from melt.errors import MeltError

    try:
        data = json.loads(run_json.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise MeltError(f"run.json is not readable JSON ({exc})", file=run_json) from exc
    if not isinstance(data, dict) or "corpus" not in data:
        raise MeltError("run.json has no 'corpus' entry", file=run_json)
    corpus = data["corpus"]
    if corpus is None:
        raise MeltError(
            "run.json names no corpus table (the run was given a DataFrame): compare annotations.parquet joined "
            "to your table instead",
            file=run_json,
            column="corpus",
        )
    if not isinstance(corpus, str) or not corpus.strip():
        raise MeltError(
            f"'corpus' must be the path of a table, not {corpus!r}", file=run_json, column="corpus"
        )
    path = Path(corpus)
    return path if path.is_absolute() else run_json.parent / path
