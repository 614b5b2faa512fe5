"""The acoustic check (MELT paper §5.2): do the LLM's voice descriptions agree with what the audio measures?

Each attribute's feature is binned by its distribution in the features table (bottom 30 % low, middle 40 % mid,
top 30 % high) per split, or per split and speaker; each description is mapped to low / mid / high by the
lexicon; the two are scored with UAR, ACC and macro-F1 (reference = acoustic bin).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from melt.acoustics.features import LOUDNESS, PITCH, SYLLABLES_PER_SEC
from melt.acoustics.lexicon import ATTRIBUTES, CLASSES, map_description
from melt.errors import MeltError

if TYPE_CHECKING:
    from melt.analysis.report import Section

#: attribute -> default feature column. Rhythm speed uses text syllables per second of audio: on espeak-ng speech
#: it separates the speed levels cleanly, where eGeMAPS' `VoicedSegmentsPerSec` overlaps across sentences.
DEFAULT_FEATURES: dict[str, str] = {"pitch": PITCH, "loudness": LOUDNESS, "rhythm_speed": SYLLABLES_PER_SEC}
LOW_QUANTILE = 0.3
HIGH_QUANTILE = 0.7
#: Fewer values than this give no meaningful 30/40/30 bins; such groups (e.g. a rare speaker) stay unbinned.
MIN_GROUP = 10
OUTCOMES = ("scored", "not_ok", "unbinned", "unknown")


@dataclass
class CheckResult:
    #: per attribute and split: n, unknown, unbinned, not_ok, rows, uar, acc, f1, confusion (see docs)
    summary: dict
    #: one row per annotation row and attribute: id, split, attribute, description, described, value, bin, outcome
    rows: pd.DataFrame


def bin_values(
    values: pd.Series,
    groups: pd.Series,
    *,
    low: float = LOW_QUANTILE,
    high: float = HIGH_QUANTILE,
    min_group: int = MIN_GROUP,
) -> tuple[pd.Series, dict[str, list[float]]]:
    """low / mid / high of each value within its group (values <= the `low` quantile are low, values above the
    `high` quantile are high); <NA> for a missing value or a group with fewer than `min_group` values.
    Also returns group -> [low threshold, high threshold]."""
    bins = pd.Series(pd.NA, index=values.index, dtype="string")
    thresholds: dict[str, list[float]] = {}
    numeric = pd.to_numeric(values, errors="coerce").astype(float)
    frame = pd.DataFrame({"value": numeric, "group": groups.astype("string")})
    for group, part in frame.dropna().groupby("group", sort=True):
        if len(part) < min_group:
            continue
        lower, upper = np.quantile(part["value"].to_numpy(), [low, high])
        thresholds[str(group)] = [float(lower), float(upper)]
        labels = np.where(part["value"] <= lower, "low", np.where(part["value"] > upper, "high", "mid"))
        bins.loc[part.index] = labels
    return bins, thresholds


def read_annotations(run: str | Path) -> tuple[pd.DataFrame, Path]:
    """`RUN_DIR/annotations.parquet` (else `annotations.csv`), or the given file."""
    from melt.corpus.schema import read_any

    run = Path(run)
    if run.is_dir():
        for name in ("annotations.parquet", "annotations.csv"):
            if (run / name).exists():
                return read_any(run / name), run / name
        raise MeltError("no annotations.parquet or annotations.csv in the run folder", file=run)
    return read_any(run), run


def _split_of_id(identifier: str) -> str:
    return identifier.split("/", 1)[0] if "/" in identifier else "all"


def check_descriptions(
    annotations: pd.DataFrame,
    features: pd.DataFrame,
    *,
    per: str = "split",
    feature_columns: dict[str, str] | None = None,
    min_group: int = MIN_GROUP,
    annotations_source: str | Path = "<annotations>",
    features_source: str | Path = "<features>",
) -> CheckResult:
    """Score the descriptions in `annotations` (columns `id` and any of pitch / loudness / rhythm_speed; rows
    whose `status` is not "ok" are left out and counted) against `features` (a table from `extract_features`).

    `per="speaker"` bins within each split and speaker, which removes each speaker's natural range.
    """
    from melt.analysis.metrics import classification_scores, confusion_matrix
    from melt.corpus.schema import require_columns

    if per not in ("split", "speaker"):
        raise MeltError(f"per must be 'split' or 'speaker', got {per!r}")
    columns = {**DEFAULT_FEATURES, **(feature_columns or {})}
    require_columns(annotations, ["id"], source=annotations_source, purpose="the acoustic check")
    attributes = [a for a in ATTRIBUTES if a in annotations.columns]
    if not attributes:
        raise MeltError(
            f"no description column: expected any of {list(ATTRIBUTES)}; found {list(annotations.columns)}",
            file=annotations_source,
        )
    require_columns(features, ["id"], source=features_source, purpose="the acoustic check")
    for attribute in attributes:
        if columns[attribute] not in features.columns:
            hint = " (extract features from a corpus with a `text` column, or pass another rate feature)"
            raise MeltError(
                f"feature column {columns[attribute]!r} for {attribute} is missing"
                + (hint if columns[attribute] == SYLLABLES_PER_SEC else ""),
                file=features_source,
            )
    if per == "speaker" and ("speaker" not in features.columns or features["speaker"].isna().all()):
        raise MeltError(
            "per-speaker bins need a `speaker` column in the features table", file=features_source
        )
    _check_unique(annotations, annotations_source)
    _check_unique(features, features_source)

    features = features.reset_index(drop=True)
    feature_ids = features["id"].astype(str)
    split = pd.Series([_split_of_id(i) for i in feature_ids], index=features.index, dtype="string")
    if "split" in features.columns:
        split = features["split"].astype("string").fillna(split)
    group = split if per == "split" else split + " / " + features["speaker"].astype("string")
    features_split = dict(zip(feature_ids, split, strict=True))

    annotations = annotations.reset_index(drop=True)
    ids = annotations["id"].astype(str)
    row_split = [features_split.get(i) or _split_of_id(i) for i in ids]
    if "status" in annotations.columns:
        status = annotations["status"].astype("string").str.strip().str.lower()
        ok = status.eq("ok").to_numpy(dtype=bool, na_value=False)
    else:
        ok = np.ones(len(annotations), dtype=bool)

    summary: dict = {
        "per": per,
        "quantiles": [LOW_QUANTILE, HIGH_QUANTILE],
        "min_group": min_group,
        "annotations": str(annotations_source),
        "features": str(features_source),
        "attributes": {},
    }
    long_rows = []
    for attribute in attributes:
        feature = columns[attribute]
        value = pd.to_numeric(features[feature], errors="coerce").astype(float)
        if "error" in features.columns:
            value = value.where(features["error"].isna())
        bins, thresholds = bin_values(value, group, min_group=min_group)
        bin_of = dict(zip(feature_ids, bins, strict=True))
        value_of = dict(zip(feature_ids, value, strict=True))
        descriptions = annotations[attribute]
        described = [map_description(d, attribute) for d in descriptions]
        frame = pd.DataFrame(
            {
                "id": ids,
                "split": row_split,
                "attribute": attribute,
                "description": descriptions.astype("string"),
                "described": pd.Series(described, dtype="string"),
                "value": [value_of.get(i, np.nan) for i in ids],
                "bin": pd.Series([bin_of.get(i, pd.NA) for i in ids], dtype="string"),
            }
        )
        frame["outcome"] = np.select(
            [~ok, frame["bin"].isna().to_numpy(), frame["described"].isna().to_numpy()],
            ["not_ok", "unbinned", "unknown"],
            default="scored",
        )
        long_rows.append(frame)
        splits = {}
        for split_name, part in frame.groupby("split", sort=True):
            scored = part[part["outcome"] == "scored"]
            reference, candidate = list(scored["bin"]), list(scored["described"])
            confusion = confusion_matrix(reference, candidate, labels=CLASSES)
            counts = part["outcome"].value_counts()
            splits[str(split_name)] = {
                "rows": len(part),
                "n": len(scored),
                **{outcome: int(counts.get(outcome, 0)) for outcome in OUTCOMES[1:]},
                **{
                    k: _finite(v)
                    for k, v in classification_scores(reference, candidate, labels=CLASSES).items()
                },
                "confusion": {ref: {c: int(confusion.at[ref, c]) for c in CLASSES} for ref in CLASSES},
            }
        unknown = frame.loc[frame["outcome"] == "unknown", "description"].fillna("<missing>")
        summary["attributes"][attribute] = {
            "feature": feature,
            "splits": splits,
            "thresholds": thresholds,
            "unknown_examples": [
                {"description": d, "count": int(c)} for d, c in unknown.value_counts().head(10).items()
            ],
        }
    return CheckResult(summary=summary, rows=pd.concat(long_rows, ignore_index=True))


def _check_unique(table: pd.DataFrame, source: str | Path) -> None:
    ids = table["id"]
    bad = ids.isna() | ids.duplicated()
    if bad.any():
        position = int(bad.to_numpy().argmax())
        what = "empty id" if pd.isna(ids.iloc[position]) else f"duplicate id {ids.iloc[position]!r}"
        raise MeltError(what, file=source, row=position + 1, column="id")


def _finite(value: float) -> float | None:
    return None if value is None or math.isnan(value) else round(float(value), 6)


def scores_table(result: CheckResult) -> pd.DataFrame:
    """One row per attribute and split: the figures of summary.json without the confusion matrices."""
    records = []
    for attribute, entry in result.summary["attributes"].items():
        for split, figures in entry["splits"].items():
            record = {"attribute": attribute, "split": split, "feature": entry["feature"]}
            record.update({k: v for k, v in figures.items() if k != "confusion"})
            records.append(record)
    return pd.DataFrame.from_records(records)


def plot_confusion(confusion: dict[str, dict[str, int]], title: str, path: str | Path) -> Path:
    """A confusion matrix PNG (rows: acoustic bin, columns: description), written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from melt.corpus.schema import atomic_write

    matrix = np.array([[confusion[r][c] for c in CLASSES] for r in CLASSES])
    figure = Figure(figsize=(3.8, 3.4), dpi=110)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.imshow(matrix, cmap="Blues", vmin=0)
    axes.set_xticks(range(len(CLASSES)), CLASSES)
    axes.set_yticks(range(len(CLASSES)), CLASSES)
    axes.set_xlabel("description")
    axes.set_ylabel("acoustic bin")
    axes.set_title(title, fontsize=9)
    peak = matrix.max() or 1
    for r in range(len(CLASSES)):
        for c in range(len(CLASSES)):
            colour = "white" if matrix[r, c] > peak / 2 else "black"
            axes.text(c, r, str(matrix[r, c]), ha="center", va="center", color=colour)
    figure.tight_layout()
    return atomic_write(path, lambda tmp: figure.savefig(tmp, format="png"))


def report_section(result: CheckResult, out_dir: str | Path) -> Section:
    """The check as a report section; draws the confusion-matrix PNGs into `out_dir`."""
    from melt.analysis.report import Section

    out_dir = Path(out_dir)
    per = result.summary["per"]
    section = Section(
        title="Acoustic check",
        paragraphs=[
            "Each attribute's feature is binned by its distribution "
            f"({'per split' if per == 'split' else 'per split and speaker'}): bottom 30 % low, middle 40 % mid, "
            "top 30 % high. Each description is mapped to low / mid / high by the lexicon; descriptions it cannot "
            "map are counted as unknown, never guessed. Reference = acoustic bin. Chance UAR is 0.333.",
        ],
        tables={"Scores per attribute and split": scores_table(result)},
        legend={
            "rows": "annotation rows in the split",
            "n": "rows scored: an ok answer, a binned feature and a mapped description",
            "not_ok": "rows whose status is not ok (invalid, failed or pending): no description to score",
            "unbinned": "no usable audio features for the row, or too few values in its bin group",
            "unknown": "the description could not be mapped to low / mid / high by the lexicon",
            "uar, acc, f1": "unweighted average recall, accuracy and macro-F1 of the description against the bin",
        },
    )
    for attribute, entry in result.summary["attributes"].items():
        examples = pd.DataFrame(entry["unknown_examples"])
        if len(examples):
            section.tables[f"Most frequent unmapped {attribute} descriptions"] = examples
        for split, figures in entry["splits"].items():
            uar = figures["uar"]
            title = f"{attribute}, {split}: UAR {uar:.3f}" if uar is not None else f"{attribute}, {split}"
            path = plot_confusion(
                figures["confusion"], title, out_dir / f"confusion_{attribute}_{_safe(split)}.png"
            )
            section.figures[f"{attribute} ({entry['feature']}), {split}: acoustic bin vs description"] = path
    return section


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)


def write_check(
    result: CheckResult, out_dir: str | Path, *, inputs: dict[str, str | Path] | None = None
) -> Path:
    """summary.json, rows.csv (every row's mapping and bin), confusion PNGs and report.md/report.html;
    `inputs` (role -> file) are recorded in the provenance."""
    from melt import provenance
    from melt.analysis.report import write_report
    from melt.corpus.schema import atomic_write, write_table

    out_dir = Path(out_dir)
    summary = result.summary
    summary["provenance"] = provenance.record(
        inputs=inputs,
        settings={
            "per": summary["per"],
            "quantiles": summary["quantiles"],
            "min_group": summary["min_group"],
            "features": {a: entry["feature"] for a, entry in summary["attributes"].items()},
        },
        api=provenance.api_call(write_check, result, out_dir),
    )
    section = report_section(result, out_dir)
    text = json.dumps(summary, indent=2, ensure_ascii=False)
    atomic_write(out_dir / "summary.json", lambda tmp: tmp.write_text(text + "\n", encoding="utf-8"))
    write_table(result.rows, out_dir / "rows.csv")
    write_report(out_dir, "Acoustic check", [section], provenance=summary["provenance"])
    return out_dir


def run_check(
    run: str | Path,
    features: str | Path,
    out_dir: str | Path,
    *,
    per: str = "split",
    feature_columns: dict[str, str] | None = None,
    min_group: int = MIN_GROUP,
) -> CheckResult:
    """`melt acoustics check`: read the run's annotations and the features file, score, write `out_dir`."""
    from melt.corpus.schema import read_any

    annotations, source = read_annotations(run)
    result = check_descriptions(
        annotations,
        read_any(features),
        per=per,
        feature_columns=feature_columns,
        min_group=min_group,
        annotations_source=source,
        features_source=features,
    )
    write_check(result, out_dir, inputs={"annotations": source, "features": features})
    return result
