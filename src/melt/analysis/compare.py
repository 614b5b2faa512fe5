"""Compare two label sources over the same utterances: counts, transitions, change rate, agreement (Cohen's κ,
Krippendorff's α), classification scores (accuracy, UAR, macro-F1, per-class precision/recall/F1), bootstrap
confidence intervals, and the list of the utterances the sources disagree on.

The reference is read as the truth where a statistic needs one (precision, recall, F1, UAR): in `melt compare`
the human label, and the LLM's label the candidate.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from melt.analysis import metrics
from melt.analysis.report import Section, write_report
from melt.corpus.labels import MELT_LABEL_SET, LabelSet
from melt.corpus.schema import atomic_write, write_table

#: Bootstrap resamples of the confidence intervals (percentile method): enough for stable 2.5 % / 97.5 %
#: quantiles (the 25th and 975th of 1,000 values), and a fraction of a second on any corpus (see `bootstrap`).
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95
#: The statistics given an interval, in the order reports list them.
INTERVAL_STATISTICS = ("change_rate", "cohen_kappa", "krippendorff_alpha", "uar", "macro_f1")
#: Disagreements listed in the report; all of them are in disagreements.csv.
DISAGREEMENTS_SHOWN = 2000
#: Below this many pairs the report warns that the intervals are rough.
FEW_PAIRS = 30

#: One sentence per statistic: how to read it. Reports print these next to the values.
READING: dict[str, str] = {
    "n": "Utterances that have a label from both sources; only these are compared.",
    "changed": "Utterances whose candidate label differs from their reference label.",
    "change_rate": "Share of the compared utterances whose label changed (1 − accuracy): the MELT paper's "
    "'changed' figure.",
    "accuracy": "Share of the compared utterances on which both sources give the same label.",
    "cohen_kappa": "Agreement beyond what chance gives with each source's own label frequencies: 1 perfect, 0 no "
    "better than chance, below 0 worse; 0.41–0.60 is usually called moderate, 0.61–0.80 substantial.",
    "krippendorff_alpha": "Agreement beyond chance with both sources' labels pooled into one distribution "
    "(nominal); near κ when both use the labels at similar rates; ≥ 0.80 is Krippendorff's bar for reliable data, "
    "≥ 0.667 for tentative conclusions.",
    "uar": "Unweighted average recall: the mean over the reference's classes of the share of each class the "
    "candidate labels the same, so small classes count as much as large ones; chance is 1 / classes.",
    "macro_f1": "Mean over the classes of F1 (the harmonic mean of precision and recall, the reference taken as "
    "the truth); a rare class weighs as much as a frequent one.",
}
NAMES = {
    "n": "utterances compared",
    "changed": "changed",
    "change_rate": "change rate",
    "accuracy": "accuracy",
    "cohen_kappa": "Cohen's κ",
    "krippendorff_alpha": "Krippendorff's α",
    "uar": "UAR",
    "macro_f1": "macro-F1",
}
PER_CLASS_READING = (
    "Per class, the reference taken as the truth: precision is the share of the utterances the candidate puts in "
    "the class that the reference puts there too; recall the share of the reference's utterances of the class "
    "that the candidate keeps in it; F1 their harmonic mean. Empty where undefined (a class a source never uses)."
)


@dataclass
class Comparison:
    reference_name: str
    candidate_name: str
    reference: list[str]
    candidate: list[str]
    #: rows left out because either label was missing
    missing: int
    labels: LabelSet
    #: ids of the compared rows (the input's ids, else their 1-based row numbers), in order
    ids: list[str] = field(default_factory=list)
    #: the compared rows' texts, when the input has them
    texts: list[str | None] | None = None
    #: rows left out, by which side lacked a label: "reference", "candidate" or "both"
    missing_by_source: dict[str, int] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"<Comparison {self.reference_name} vs {self.candidate_name}: {self.n} pairs>"

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

    @property
    def reference_column(self) -> str:
        """The reference's name in table headers: which source it is, even when both columns share a name."""
        return f"{self.reference_name} (reference)"

    @property
    def candidate_column(self) -> str:
        return f"{self.candidate_name} (candidate)"

    def counts(self) -> pd.DataFrame:
        table = pd.DataFrame(
            {
                self.reference_column: pd.Series(self.reference, dtype=object).value_counts(),
                self.candidate_column: pd.Series(self.candidate, dtype=object).value_counts(),
            }
        )
        table = table.reindex(self.classes).fillna(0).astype(int).rename_axis("class")
        table["difference"] = table[self.candidate_column] - table[self.reference_column]
        return table

    def transition(self) -> pd.DataFrame:
        return metrics.confusion_matrix(self.reference, self.candidate, self.classes)

    def disagreements(self) -> pd.DataFrame:
        """id, text (when known), the reference and the candidate label of every utterance whose labels differ."""
        rows = [i for i, (r, c) in enumerate(zip(self.reference, self.candidate, strict=True)) if r != c]
        table = pd.DataFrame({"id": pd.Series([self.ids[i] for i in rows], dtype="string")})
        if self.texts is not None:
            table["text"] = pd.Series([self.texts[i] for i in rows], dtype="string")
        table[self.reference_column] = pd.Series([self.reference[i] for i in rows], dtype="string")
        table[self.candidate_column] = pd.Series([self.candidate[i] for i in rows], dtype="string")
        return table

    def summary(
        self,
        *,
        resamples: int = BOOTSTRAP_RESAMPLES,
        seed: int = BOOTSTRAP_SEED,
        confidence: float = CONFIDENCE,
    ) -> dict:
        counts = self.counts()
        off_reference = self.labels.off_label_counts(self.reference)
        off_candidate = self.labels.off_label_counts(self.candidate)
        off_all = dict(off_reference)
        for label, count in off_candidate.items():
            off_all[label] = off_all.get(label, 0) + count
        transition = self.transition()
        point = {
            name: _defined(value) for name, value in metrics.pair_statistics(transition.to_numpy()).items()
        }
        per_class = metrics.per_class_scores(transition)
        return {
            "reference": self.reference_name,
            "candidate": self.candidate_name,
            "n": self.n,
            "missing": self.missing,
            "missing_by_source": {
                "reference": self.missing_by_source.get("reference", 0),
                "candidate": self.missing_by_source.get("candidate", 0),
                "both": self.missing_by_source.get("both", 0),
            },
            "changed": self.changed,
            # Undefined measures (no pairs, a single class) are None: JSON null, never NaN.
            "change_rate": point["change_rate"],
            "accuracy": point["accuracy"],
            "counts": {
                "reference": {k: int(v) for k, v in counts[self.reference_column].items()},
                "candidate": {k: int(v) for k, v in counts[self.candidate_column].items()},
            },
            "transition": {
                ref: {cand: int(transition.loc[ref, cand]) for cand in transition.columns}
                for ref in transition.index
            },
            "cohen_kappa": point["cohen_kappa"],
            "krippendorff_alpha": point["krippendorff_alpha"],
            "uar": point["uar"],
            "macro_f1": point["macro_f1"],
            "per_class": {
                label: {
                    "reference": int(row.reference),
                    "candidate": int(row.candidate),
                    "agreed": int(row.agreed),
                    "precision": _defined(row.precision),
                    "recall": _defined(row.recall),
                    "f1": _defined(row.f1),
                }
                for label, row in per_class.iterrows()
            },
            "intervals": bootstrap(
                transition.to_numpy(), resamples=resamples, seed=seed, confidence=confidence
            ),
            "off_label": off_all,
            "off_label_by_source": {"reference": off_reference, "candidate": off_candidate},
            "label_set": list(self.labels.labels),
            "reading": {name: READING[name] for name in READING},
        }


def bootstrap(
    confusion: np.ndarray,
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = CONFIDENCE,
) -> dict[str, Any]:
    """Percentile bootstrap intervals of `INTERVAL_STATISTICS` from a confusion matrix of n utterance pairs.

    Each resample draws n pairs with replacement from the observed ones. Its confusion matrix is then a
    multinomial draw of n over the K × K cells with the observed shares, so it is drawn as that directly: the cost
    is K² per resample whatever n, and all resamples are scored at once (`metrics.pair_statistics`). Resamples in
    which a statistic is undefined (one label throughout, for κ and α) are left out of its interval and counted."""
    counts = np.asarray(confusion, dtype=np.int64)
    n = int(counts.sum())
    method = {
        "method": "percentile bootstrap over utterances (pairs drawn with replacement)",
        "resamples": resamples,
        "seed": seed,
        "confidence": confidence,
    }
    if n == 0 or resamples < 1:
        return {**method, **{name: None for name in INTERVAL_STATISTICS}}
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n, counts.ravel() / n, size=resamples).reshape(resamples, *counts.shape)
    statistics = metrics.pair_statistics(draws)
    tail = (1 - confidence) / 2
    intervals: dict[str, Any] = dict(method)
    for name in INTERVAL_STATISTICS:
        values = statistics[name]
        defined = values[~np.isnan(values)]
        if not len(defined):
            intervals[name] = None
            continue
        low, high = np.quantile(defined, [tail, 1 - tail])
        intervals[name] = {
            "low": float(low),
            "high": float(high),
            "undefined_resamples": int(len(values) - len(defined)),
        }
    return intervals


def _defined(value: float) -> float | None:
    value = float(value)
    return None if np.isnan(value) else value


def _shown(value: float | None, form: str = "{:.4f}") -> str:
    return "undefined" if value is None else form.format(value)


def _interval(interval: dict | None, form: str = "{:.4f}") -> str:
    if interval is None:
        return "undefined"
    return f"{form.format(interval['low'])} – {form.format(interval['high'])}"


def _missing(value: object) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value))


def compare_labels(
    reference: Sequence[object],
    candidate: Sequence[object],
    *,
    reference_name: str = "reference",
    candidate_name: str = "candidate",
    labels: LabelSet = MELT_LABEL_SET,
    ids: Sequence[object] | None = None,
    texts: Sequence[object] | None = None,
) -> Comparison:
    """Normalise both sources with `labels` and pair them up; pairs with a missing label are counted (by the
    side that lacks it) and left out. `ids` and `texts` (same length) name the rows in the disagreements; without
    `ids`, rows are named by their 1-based position."""
    ref = [labels.normalize(x) for x in reference]
    cand = [labels.normalize(x) for x in candidate]
    if len(ref) != len(cand):
        raise ValueError(f"label sources differ in length: {len(ref)} vs {len(cand)}")
    for name, values in (("ids", ids), ("texts", texts)):
        if values is not None and len(values) != len(ref):
            raise ValueError(f"{name} has {len(values)} values for {len(ref)} label pairs")
    row_ids = [str(i + 1) if ids is None or _missing(ids[i]) else str(ids[i]) for i in range(len(ref))]
    kept = [i for i, (r, c) in enumerate(zip(ref, cand, strict=True)) if r is not None and c is not None]
    missing = {
        "reference": sum(r is None and c is not None for r, c in zip(ref, cand, strict=True)),
        "candidate": sum(r is not None and c is None for r, c in zip(ref, cand, strict=True)),
        "both": sum(r is None and c is None for r, c in zip(ref, cand, strict=True)),
    }
    return Comparison(
        reference_name=reference_name,
        candidate_name=candidate_name,
        reference=[ref[i] for i in kept],  # type: ignore[misc]
        candidate=[cand[i] for i in kept],  # type: ignore[misc]
        missing=len(ref) - len(kept),
        labels=labels,
        ids=[row_ids[i] for i in kept],
        texts=None if texts is None else [None if _missing(texts[i]) else str(texts[i]) for i in kept],
        missing_by_source=missing,
    )


def _count_axis(axis) -> None:
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


def plot_transition(comparison: Comparison, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = comparison.transition()
    rows = counts.sum(axis=1).replace(0, 1)
    normalised = counts.div(rows, axis=0)
    size = len(counts)
    # Cells big enough for four-digit counts at a readable size, whatever the number of classes.
    side = max(4.8, 0.75 * size + 1.6)
    fig, axes = plt.subplots(1, 2, figsize=(2 * side + 2.4, side + 0.9))
    fontsize = 10 if size <= 8 else 8 if size <= 12 else 6
    for ax, data, title, fmt, label in (
        (axes[0], counts, "Counts", "{:,.0f}", "utterances"),
        (axes[1], normalised, "Share of each reference label (rows sum to 1)", "{:.2f}", "share of the row"),
    ):
        values = data.to_numpy(dtype=float)
        image = ax.imshow(values, cmap="Blues", vmin=0)
        ax.set_xticks(range(len(data.columns)), data.columns, rotation=45, ha="right")
        ax.set_yticks(range(len(data.index)), data.index)
        ax.set_xlabel(f"{comparison.candidate_name} (candidate)")
        ax.set_ylabel(f"{comparison.reference_name} (reference)")
        ax.set_title(title)
        peak = values.max() or 1
        for i in range(data.shape[0]):
            for j in range(data.shape[1]):
                value = values[i, j]
                ax.text(
                    j,
                    i,
                    fmt.format(value),
                    ha="center",
                    va="center",
                    fontsize=fontsize,
                    fontweight="bold" if i == j else "normal",
                    color="white" if value > 0.55 * peak else "black",
                )
        bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        bar.set_label(label)
        if data is counts:
            _count_axis(bar.ax.yaxis)
    fig.suptitle(
        f"Transitions {comparison.reference_name} → {comparison.candidate_name} (n = {comparison.n:,}; "
        "diagonal in bold: unchanged)"
    )
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path


def plot_distribution(comparison: Comparison, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = comparison.counts()
    fig, ax = plt.subplots(figsize=(max(7.0, 1.1 * len(counts) + 2), 4.8))
    width = 0.4
    positions = range(len(counts))
    for offset, column in (
        (-width / 2, comparison.reference_column),
        (width / 2, comparison.candidate_column),
    ):
        bars = ax.bar([p + offset for p in positions], counts[column], width, label=column)
        ax.bar_label(bars, labels=[f"{v:,}" for v in counts[column]], fontsize=8)
    ax.set_xticks(list(positions), counts.index, rotation=30, ha="right")
    ax.set_xlabel("class")
    ax.set_ylabel("utterances")
    _count_axis(ax.yaxis)
    ax.margins(y=0.12)
    ax.set_title(f"Label counts of both sources (n = {comparison.n:,} utterances)")
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path


def statistics_table(summary: dict) -> pd.DataFrame:
    """statistic | value | 95 % CI | how to read it."""
    intervals = summary["intervals"]
    confidence = f"{intervals['confidence']:.0%} CI"
    rows = []
    for name in (
        "n",
        "changed",
        "change_rate",
        "accuracy",
        "cohen_kappa",
        "krippendorff_alpha",
        "uar",
        "macro_f1",
    ):
        value = summary[name]
        if name in ("n", "changed"):
            shown, interval = f"{value:,}", ""
        else:
            shown = _shown(value)
            interval = _interval(intervals.get(name)) if name in INTERVAL_STATISTICS else ""
            if name == "accuracy" and intervals.get("change_rate"):
                low, high = intervals["change_rate"]["low"], intervals["change_rate"]["high"]
                interval = f"{1 - high:.4f} – {1 - low:.4f}"
        rows.append(
            {"statistic": NAMES[name], "value": shown, confidence: interval, "how to read it": READING[name]}
        )
    return pd.DataFrame(rows).set_index("statistic")


def per_class_table(summary: dict, comparison: Comparison) -> pd.DataFrame:
    table = pd.DataFrame.from_dict(summary["per_class"], orient="index").rename_axis("class")
    table = table.rename(
        columns={"reference": comparison.reference_column, "candidate": comparison.candidate_column}
    )
    for column in ("precision", "recall", "f1"):
        table[column] = ["" if pd.isna(v) else _shown(v) for v in table[column]]
    return table.rename(columns={"f1": "F1"})


def _left_out(summary: dict, comparison: Comparison) -> str:
    by_source = summary["missing_by_source"]
    if not summary["missing"]:
        return "No utterance was left out: every row has both labels."
    parts = []
    if by_source["reference"]:
        parts.append(f"{by_source['reference']:,} without a {comparison.reference_name} label (reference)")
    if by_source["candidate"]:
        parts.append(f"{by_source['candidate']:,} without a {comparison.candidate_name} label (candidate)")
    if by_source["both"]:
        parts.append(f"{by_source['both']:,} without either")
    return f"{summary['missing']:,} utterances were left out: " + "; ".join(parts) + "."


def comparison_sections(comparison: Comparison, summary: dict, out_dir: Path) -> list[Section]:
    """The report sections of a comparison; writes its two figures into `out_dir`."""
    transition_png = plot_transition(comparison, out_dir / "transition.png")
    distribution_png = plot_distribution(comparison, out_dir / "distribution.png")
    intervals = summary["intervals"]
    paragraphs = [
        f"{summary['changed']:,} of {summary['n']:,} utterances ({_shown(summary['change_rate'], '{:.2%}')}) carry "
        f"a different label in {comparison.candidate_name} (the candidate) than in {comparison.reference_name} (the "
        "reference). " + _left_out(summary, comparison),
        f"Intervals: {intervals['confidence']:.0%} percentile bootstrap over the utterances, "
        f"{intervals['resamples']:,} resamples of the {summary['n']:,} pairs drawn with replacement (seed "
        f"{intervals['seed']}). A statistic left undefined in some resamples (one label throughout) is bounded by "
        "the others.",
    ]
    if 0 < comparison.n < FEW_PAIRS:
        paragraphs.append(
            f"Only {comparison.n} pairs: the statistics and their intervals are rough; read them with care."
        )
    if summary["off_label"]:
        listed = ", ".join(f"{k} ({v})" for k, v in summary["off_label"].items())
        paragraphs.append(f"Labels outside the label set, kept as they are: {listed}.")
    overview = Section(
        title=f"{comparison.reference_name} (reference) vs {comparison.candidate_name} (candidate)",
        paragraphs=paragraphs,
        tables={"Agreement and classification statistics": statistics_table(summary)},
    )
    details = Section(
        title="Per class and per label",
        paragraphs=[PER_CLASS_READING],
        tables={
            "Precision, recall and F1 per class": per_class_table(summary, comparison),
            "Label counts (difference: candidate − reference)": comparison.counts(),
            f"Transitions (rows: {comparison.reference_name}, the reference; columns: {comparison.candidate_name}, "
            "the candidate)": comparison.transition().rename_axis(
                index=f"{comparison.reference_name} ↓ / {comparison.candidate_name} →", columns=None
            ),
        },
        figures={"Transition matrix": transition_png, "Label distribution": distribution_png},
    )
    disagreements = comparison.disagreements()
    shown = disagreements.head(DISAGREEMENTS_SHOWN)
    listing = Section(
        title="Disagreements",
        paragraphs=[
            (
                f"The {len(disagreements):,} utterances whose labels differ, in input order"
                + (
                    f" (the first {DISAGREEMENTS_SHOWN:,} here; all of them in disagreements.csv)."
                    if len(disagreements) > DISAGREEMENTS_SHOWN
                    else " (also in disagreements.csv)."
                )
            )
            if len(disagreements)
            else "The two sources agree on every compared utterance."
        ],
        tables={"Utterances whose labels differ": shown} if len(shown) else {},
    )
    return [overview, details, listing]


def annotation_run_section(annotations: pd.DataFrame) -> Section:
    """How the rows of an annotation run ended (`status`) and what was flagged (`flags`), with a legend of every
    status and flag."""
    from melt.annotate.validate import FLAG_MEANINGS, STATUS_MEANINGS, flag_name

    statuses = annotations["status"].astype("string").fillna("(none)").value_counts()
    status_table = pd.DataFrame(
        {"utterances": [int(statuses.get(s, 0)) for s in STATUS_MEANINGS]},
        index=pd.Index(list(STATUS_MEANINGS), name="status"),
    )
    flags: dict[str, int] = {}
    column = annotations["flags"] if "flags" in annotations.columns else pd.Series(dtype="string")
    for value in column.dropna().astype(str):
        for flag in {flag_name(f) for f in value.split(";") if f}:
            flags[flag] = flags.get(flag, 0) + 1
    tables = {"Utterances per status": status_table}
    if flags:
        tables["Utterances per flag (a row may carry several)"] = pd.DataFrame(
            {"utterances": list(flags.values())}, index=pd.Index(list(flags), name="flag")
        )
    return Section(
        title="The annotation run",
        paragraphs=[
            f"{len(annotations):,} utterances of the run. Only rows with status ok have an LLM label; the others are "
            "left out of the comparison as missing candidate labels."
        ],
        tables=tables,
        legend={**{f"status {k}": v for k, v in STATUS_MEANINGS.items()}, **FLAG_MEANINGS},
    )


def write_comparison(
    comparison: Comparison,
    out_dir: str | Path,
    title: str = "Label comparison",
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    inputs: dict[str, str | Path | None] | None = None,
    extra_sections: Sequence[Section] = (),
) -> dict:
    """Write `summary.json`, `disagreements.csv`, `transition.png`, `distribution.png`, `report.md` and
    `report.html` into `out_dir`; return the summary. `inputs` (role -> file) are recorded in the provenance;
    `extra_sections` follow the comparison in the report."""
    from melt import provenance

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = comparison.summary(resamples=resamples, seed=seed)
    summary["provenance"] = provenance.record(
        inputs=inputs,
        settings={
            "reference": comparison.reference_name,
            "candidate": comparison.candidate_name,
            "labels": list(comparison.labels.labels),
            "bootstrap_resamples": resamples,
            "bootstrap_seed": seed,
            "confidence": CONFIDENCE,
        },
        api=provenance.api_call(write_comparison, comparison, out_dir, title=title),
    )
    write_table(comparison.disagreements(), out_dir / "disagreements.csv")
    text = json.dumps(summary, indent=2, allow_nan=False, ensure_ascii=False)
    atomic_write(out_dir / "summary.json", lambda tmp: tmp.write_text(text, encoding="utf-8"))
    sections = [*comparison_sections(comparison, summary, out_dir), *extra_sections]
    write_report(out_dir, title, sections, provenance=summary["provenance"])
    return summary


def load_labelled(path: str | Path) -> tuple[pd.DataFrame, str, str]:
    """The table to compare and its default (reference, candidate) columns.

    A run directory of `melt annotate` is joined to the corpus table named in its `run.json`, giving the human
    `label` and the LLM's `emotion`; any other path is read as a table whose default columns are `label` and
    `llm_label` (a corpus table built from a published MELT file)."""
    table, _ = read_labelled(path)
    return table, "label", ("emotion" if Path(path).is_dir() else "llm_label")


def read_labelled(path: str | Path) -> tuple[pd.DataFrame, dict[str, Path]]:
    """The table to compare (see `load_labelled`) and the files it was read from, by role."""
    from melt.corpus.schema import read_any, read_table
    from melt.errors import MeltError

    path = Path(path)
    if not path.is_dir():
        return read_any(path), {"table": path}
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
    return joined, {"run.json": run_json, "annotations": annotations_path, "corpus": corpus_path}


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
