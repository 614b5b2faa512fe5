"""What a researcher checks first about a corpus table: size, speakers, hours, durations, labels per part, votes.

`describe_table` returns plain JSON-ready data; `write_description` also writes `describe.json` and figures
(`durations.png`, `labels.png`, and `votes.png` when the table has votes) with how they were made.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from melt.corpus.labels import MELT_LABELS
from melt.corpus.schema import atomic_write, votes_of

HISTOGRAM_BINS = 20


def describe_table(table: pd.DataFrame, *, source: str | Path = "<table>") -> dict:
    duration = table["duration"].astype("Float64").dropna().astype(float)
    folds = _fold_parts(table)
    description: dict = {
        "utterances": len(table),
        "speakers": int(table["speaker"].nunique()),
        "speakers_missing": int(table["speaker"].isna().sum()),
        "hours": round(float(duration.sum()) / 3600, 4),
        "duration_sources": _counts(table["duration_source"]),
        "corpora": _counts(table["corpus"]),
        "gender": _counts(table["gender"]),
        "duration": _duration_summary(duration, missing=int(table["duration"].isna().sum())),
        "labels": _counts(table["label"]),
        "off_set_labels": sorted(
            {str(v) for v in table["label"].dropna().unique() if str(v) not in MELT_LABELS}
        ),
        "labels_per_split": _per_part(table, "split"),
        "labels_per_fold": _per_part(table.assign(fold=folds), "fold"),
        "speakers_per_fold": {
            str(fold): int(n)
            for fold, n in table.assign(fold=folds).groupby("fold")["speaker"].nunique().items()
        },
        "votes": _votes_summary(votes_of(table, source=source)),
        "audio": {
            "with_audio": int(table["audio"].notna().sum()),
            "problems": _counts(table["audio_problem"].str.split(": ", n=1).str[0])
            if "audio_problem" in table.columns
            else {},
        },
    }
    return description


def _fold_parts(table: pd.DataFrame) -> pd.Series:
    """The fold of each row; in a table of several corpora, qualified by the corpus ("tess 1"): each corpus
    numbers its own folds, so fold 1 of one corpus has nothing to do with fold 1 of another."""
    corpora = table["corpus"].dropna().unique()
    if len(corpora) < 2:
        return table["fold"]
    return pd.Series(
        [
            pd.NA if pd.isna(fold) else f"{corpus} {fold}" if pd.notna(corpus) else str(fold)
            for corpus, fold in zip(table["corpus"], table["fold"], strict=True)
        ],
        index=table.index,
        dtype="string",
    )


def _counts(values: pd.Series) -> dict[str, int]:
    counts = values.dropna().astype(str).value_counts()
    return {str(k): int(v) for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))}


def _per_part(table: pd.DataFrame, part: str) -> dict[str, dict[str, int]]:
    known = table[table[part].notna()]
    return {str(name): _counts(rows["label"]) for name, rows in known.groupby(part, sort=True)}


def _duration_summary(duration: pd.Series, *, missing: int) -> dict:
    if duration.empty:
        return {"known": 0, "missing": missing, "histogram": {"edges": [], "counts": []}}
    counts, edges = np.histogram(duration, bins=HISTOGRAM_BINS)
    return {
        "known": len(duration),
        "missing": missing,
        "min": round(float(duration.min()), 4),
        "median": round(float(duration.median()), 4),
        "mean": round(float(duration.mean()), 4),
        "max": round(float(duration.max()), 4),
        "histogram": {"edges": [round(float(e), 4) for e in edges], "counts": [int(c) for c in counts]},
    }


def _votes_summary(votes: list[dict[str, dict[str, float]]]) -> dict:
    raters = [len(v) for v in votes if v]
    per_utterance = pd.Series(raters, dtype=int).value_counts().sort_index()
    return {
        "utterances_with_votes": len(raters),
        "raters_per_utterance": {str(k): int(v) for k, v in per_utterance.items()},
        "mean_raters": round(float(np.mean(raters)), 4) if raters else None,
        "multi_label_raters": sum(len(weights) > 1 for v in votes for weights in v.values()),
    }


def write_description(table: pd.DataFrame, out_dir: str | Path, *, source: str | Path) -> dict:
    """`describe_table` plus how it was made, written to `out_dir/describe.json` with its figures."""
    from melt import __version__

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    description = describe_table(table, source=source)
    figures = _figures(table, description, out_dir)
    description["figures"] = [p.name for p in figures]
    description["made_by"] = {
        "melt": __version__,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "table": str(Path(source).resolve()) if str(source) != "<table>" else str(source),
        "command": "melt corpus describe",
    }
    text = json.dumps(description, indent=2, ensure_ascii=False)
    atomic_write(out_dir / "describe.json", lambda tmp: tmp.write_text(text + "\n", encoding="utf-8"))
    return description


def _figures(table: pd.DataFrame, description: dict, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    written = []

    def save(figure, name: str) -> None:
        path = out_dir / name
        atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
        plt.close(figure)
        written.append(path)

    figure, axis = plt.subplots(figsize=(7, 3.6))
    durations = table["duration"].astype("Float64").dropna().astype(float)
    if len(durations):
        axis.hist(durations, bins=HISTOGRAM_BINS, color="#4477aa")
    axis.set_xlabel("duration (s)")
    axis.set_ylabel("utterances")
    axis.set_title(
        f"{len(durations)} durations, {description['hours']:.2f} h ({description['duration']['missing']} missing)"
    )
    save(figure, "durations.png")

    part = "split" if description["labels_per_split"] else "fold" if description["labels_per_fold"] else None
    counts = pd.DataFrame(
        description[f"labels_per_{part}"] if part else {"all": description["labels"]}
    ).fillna(0)
    figure, axis = plt.subplots(figsize=(8, 4))
    if not counts.empty:
        counts.sort_index().plot.bar(ax=axis, width=0.8)
        axis.legend(title=part or "", fontsize=8)
    axis.set_ylabel("utterances")
    axis.yaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_title(f"labels per {part}" if part else "labels")
    save(figure, "labels.png")

    per_utterance = description["votes"]["raters_per_utterance"]
    if per_utterance:
        figure, axis = plt.subplots(figsize=(6, 3.4))
        raters = [int(k) for k in per_utterance]
        axis.bar(raters, list(per_utterance.values()), color="#228833")
        axis.set_xticks(raters)
        axis.yaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_xlabel("raters per utterance")
        axis.set_ylabel("utterances")
        axis.set_title(f"votes: {description['votes']['utterances_with_votes']} utterances")
        save(figure, "votes.png")
    return written


def print_description(description: dict, console) -> None:
    from rich.table import Table

    duration = description["duration"]
    console.print(
        f"{description['utterances']} utterances, {description['speakers']} speakers, "
        f"{description['hours']:.2f} hours"
        + (
            " (durations from "
            + ", ".join(f"{k} {v}" for k, v in description["duration_sources"].items())
            + ")"
            if description["duration_sources"]
            else ""
        )
        + (
            f"; duration {duration['min']:.2f}-{duration['max']:.2f} s (median {duration['median']:.2f})"
            if duration["known"]
            else ""
        )
        + (f"; {duration['missing']} without duration" if duration["missing"] else "")
    )
    for key in ("corpora", "gender"):
        if description[key]:
            console.print(f"{key}: " + ", ".join(f"{k} {v}" for k, v in description[key].items()))
    part = "split" if description["labels_per_split"] else "fold" if description["labels_per_fold"] else None
    per_part = description[f"labels_per_{part}"] if part else {"all": description["labels"]}
    labels = sorted({label for counts in per_part.values() for label in counts})
    table = Table(title=f"labels per {part}" if part else "labels")
    table.add_column("label")
    for name in per_part:
        table.add_column(str(name), justify="right")
    for label in labels:
        flag = "" if label in MELT_LABELS else " (off-set)"
        table.add_row(label + flag, *(str(per_part[name].get(label, 0)) for name in per_part))
    console.print(table)
    votes = description["votes"]
    if votes["utterances_with_votes"]:
        spread = ", ".join(f"{n} raters: {c}" for n, c in votes["raters_per_utterance"].items())
        console.print(
            f"votes: {votes['utterances_with_votes']} utterances, mean {votes['mean_raters']} raters ({spread}); "
            f"{votes['multi_label_raters']} multi-label ratings"
        )
    if description["audio"]["problems"]:
        listed = ", ".join(f"{k} {v}" for k, v in description["audio"]["problems"].items())
        console.print(f"[yellow]audio problems:[/] {listed}")
