"""The outputs of `melt ambiguity`: metrics.csv, summary.json, distributions.parquet, saturation.csv, PNG plots
and report.html / report.md (through `melt.analysis.report`)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from melt import provenance
from melt.ambiguity.distributions import TERTILES
from melt.ambiguity.evaluate import PROTOCOLS, SOURCES, AmbiguityResult
from melt.ambiguity.metrics import SCORE_NAMES, calibration_error
from melt.analysis.report import Section, write_report
from melt.corpus.schema import atomic_write, write_table

PLOTTED_METRICS: tuple[str, ...] = ("jsd", "bc", "r2", "ece", "acc")
SOURCE_COLOURS = {"human": "tab:green", "synthetic": "tab:blue", "combined": "tab:orange"}
METRIC_TITLES = {
    "jsd": "JSD ↓",
    "bc": "Bhattacharyya ↑",
    "r2": "R² ↑",
    "ece": "ECE ↓",
    "acc": "accuracy ↑",
    "f1_macro": "macro-F1 ↑",
    "f1_weighted": "weighted F1 ↑",
    "entropy": "entropy (bits)",
}
NO_PANEL = "No synthetic source was given (--votes): human-only statistics (ambiguity, tertiles, rater agreement, split-half consistency of the human raters)."


def notes(result: AmbiguityResult) -> list[str]:
    """One sentence per thing dropped, repaired or left out, for the terminal, summary.json and the report."""
    human, out = result.human.counts, []
    if human["utterances_without_votes"]:
        out.append(
            f"{human['utterances_without_votes']} of {human['utterances']} utterance(s) have no human votes: "
            "left out of ambiguity, tertiles and scoring."
        )
    if human["utterances_without_votes_in_set"]:
        out.append(
            f"{human['utterances_without_votes_in_set']} utterance(s) have human votes but none on the label set "
            "(labels outside it, or no weight): left out of ambiguity, tertiles and scoring."
        )
    if human["votes_off_set"]:
        out.append(
            f"{human['votes_off_set']} human vote(s) for labels outside the set dropped "
            f"({_listing(human['off_set_labels'])}; {human['weight_off_set']:g} rater weight)."
        )
    if human["raters_all_off_set"]:
        out.append(
            f"{human['raters_all_off_set']} human rater vote(s) lay wholly outside the set: not counted."
        )
    if human["raters_renormalised"]:
        out.append(
            f"{human['raters_renormalised']} human rater(s) with weights not summing to 1: rescaled to 1."
        )
    if human["raters_without_weight"]:
        out.append(
            f"{human['raters_without_weight']} human rater(s) with no weight (empty or all 0): not counted."
        )
    split = result.scoring["split-half"]
    if split["left_out_one_rater"]:
        out.append(
            f"{split['left_out_one_rater']} utterance(s) with a single rater: left out of the split-half protocol."
        )
    panel = result.panel
    if panel is None:
        out.append(NO_PANEL)
        return out
    counts = panel.counts
    not_ok = {k: v for k, v in counts["status"].items() if k != "ok"}
    if not_ok:
        out.append(f"panel rows that are not votes (status): {_listing(not_ok)}.")
    weights = counts.get("weights")
    if weights and len(set(weights.values())) > 1:
        listed = ", ".join(f"{annotator} ×{weight:g}" for annotator, weight in weights.items())
        out.append(f"panel votes weighted by annotator: {listed}.")
    if counts["ok_without_label"]:
        out.append(f"{counts['ok_without_label']} panel row(s) with status ok but no label: not counted.")
    if counts["votes_off_set"]:
        out.append(
            f"{counts['votes_off_set']} panel vote(s) for labels outside the set dropped "
            f"({_listing(counts['off_set_labels'])})."
        )
    if counts["ids_not_in_corpus"]:
        examples = ", ".join(counts["ids_not_in_corpus_examples"])
        out.append(
            f"{counts['ids_not_in_corpus']} id(s) in the panel votes are not in the corpus (e.g. {examples}): "
            f"their {counts['rows_for_ids_not_in_corpus']} row(s) ignored."
        )
    if counts["corpus_ids_not_in_panel"]:
        out.append(
            f"{counts['corpus_ids_not_in_panel']} corpus utterance(s) have no row in the panel votes: left out of "
            "scoring."
        )
    if counts["utterances_without_valid_votes"]:
        out.append(
            f"{counts['utterances_without_valid_votes']} utterance(s) got no valid panel vote: synthetic "
            "distribution undefined, left out of scoring."
        )
    if not result.scoring["paper"]["scored"]:
        out.append("No utterance has both human votes and a valid panel vote: nothing could be scored.")
    return out


def _listing(counts: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items())


def _jsonable(value: object) -> object:
    """NaN and ±inf become null (JSON has no NaN); numpy scalars become Python ones."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _records(table: pd.DataFrame) -> list[dict]:
    return [_jsonable(row) for row in table.to_dict(orient="records")]


def tertile_summary(result: AmbiguityResult) -> pd.DataFrame:
    """Size and ambiguity range of each tertile."""
    rows = []
    for name in TERTILES:
        values = result.ambiguity[result.tertile == name]
        rows.append(
            {
                "tertile": name,
                "n": len(values),
                "ambiguity_min": float(values.min()) if len(values) else float("nan"),
                "ambiguity_mean": float(values.mean()) if len(values) else float("nan"),
                "ambiguity_max": float(values.max()) if len(values) else float("nan"),
            }
        )
    return pd.DataFrame(rows)


def write_ambiguity(
    result: AmbiguityResult,
    out_dir: str | Path,
    *,
    corpus_path: str | Path | None = None,
    votes_path: str | Path | None = None,
) -> dict:
    """Write every output into `out_dir` and return the summary (also summary.json)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_table(result.metrics, out_dir / "metrics.csv")
    write_table(result.distributions(), out_dir / "distributions.parquet")
    outputs = ["metrics.csv", "distributions.parquet"]
    if result.saturation is not None:
        write_table(result.saturation, out_dir / "saturation.csv")
        outputs.append("saturation.csv")
    figures = {
        "Ambiguity of the human votes, by tertile": plot_ambiguity(result, out_dir / "ambiguity.png"),
        "Metrics per ambiguity tertile and source": plot_metrics(result.metrics, out_dir / "metrics.png"),
        "Reliability diagrams (all tertiles; split-half: all seeds pooled)": plot_reliability(
            result, out_dir / "reliability.png"
        ),
    }
    if result.saturation is not None:
        figures["Saturation: JSD and BC against the number of synthetic annotators"] = plot_saturation(
            result.saturation, out_dir / "saturation.png"
        )
    outputs += [Path(p).name for p in figures.values()]
    votes_file = _votes_file(votes_path)
    if result.panel is not None and votes_path is None:
        votes_file = Path(result.panel.counts["file"])
    seed_spread = (
        result.metrics_per_seed.groupby(["protocol", "source", "tertile"], sort=False)[list(SCORE_NAMES)]
        .std()
        .reset_index()
    )
    summary = {
        "provenance": provenance.record(
            inputs={"corpus": corpus_path, "votes": votes_file},
            settings=result.config.public(),
            api=provenance.api_call(
                write_ambiguity, result, out_dir, corpus_path=corpus_path, votes_path=votes_path
            ),
        ),
        "labels": list(result.labels),
        "synthetic_source": result.panel is not None,
        "notes": notes(result),
        "human": result.human.counts,
        "panel": None
        if result.panel is None
        else {
            **result.panel.counts,
            "personas": result.panel.personas,
            "temperatures": result.panel.temperatures,
        },
        "scoring": result.scoring,
        "protocols": {name: PROTOCOLS[name] for name in result.metrics["protocol"].unique()},
        "tertiles": _records(tertile_summary(result)),
        "agreement": _records(result.agreement),
        "metrics": _records(result.metrics),
        "split_half_seed_sd": _records(seed_spread),
        "saturation": None if result.saturation is None else _records(result.saturation),
        "outputs": [*outputs, "summary.json", "report.md", "report.html"],
    }
    summary = _jsonable(summary)
    text = json.dumps(summary, indent=2, ensure_ascii=False) + "\n"
    atomic_write(out_dir / "summary.json", lambda tmp: tmp.write_text(text, encoding="utf-8"))
    write_report(
        out_dir,
        "Emotion distributions and ambiguity",
        sections(result, summary, figures),
        provenance=summary["provenance"],
    )
    return summary


def _votes_file(path: str | Path | None) -> Path | None:
    if path is None:
        return None
    path = Path(path)
    return path / "votes.parquet" if path.is_dir() else path


def sections(result: AmbiguityResult, summary: dict, figures: dict[str, Path]) -> list[Section]:
    """The report: the settings in words, the human votes, the panel, the metrics, the saturation curve (how it
    was made closes every report, see `write_report`)."""
    settings = summary["provenance"]["settings"]
    out = [
        Section(
            "Settings",
            [
                f"Label set: {', '.join(result.labels)}. Synthetic vote weight W = {settings['synthetic_weight']:g}; "
                f"ambiguity normalised by {_norm_words(settings['entropy_norm'])}; split-half seeds "
                f"{settings['seeds']}; {settings['saturation_draws']} draws per sub-panel size; ECE with "
                f"{settings['ece_bins']} bins."
            ],
        )
    ]
    human_counts = summary["human"]
    overview = pd.DataFrame(
        {
            "value": [
                human_counts["utterances"],
                human_counts["utterances_with_votes"],
                human_counts["raters"],
                human_counts["utterances_with_one_rater"],
                human_counts["votes_off_set"],
            ]
        },
        index=pd.Index(
            [
                "utterances",
                "with human votes on the label set",
                "human rater votes",
                "utterances with one rater",
                "human votes outside the set (dropped)",
            ],
            name="human votes",
        ),
    )
    agreement = result.agreement.set_index(["raters", "tertile"])
    agreement.index = [f"{r} / {t}" for r, t in agreement.index]
    agreement.index.name = "raters / tertile"
    out.append(
        Section(
            "Human votes and ambiguity",
            [
                "Ambiguity is the entropy of an utterance's human votes divided by "
                f"{_norm_words(settings['entropy_norm'])}; tertiles are cut by rank (ties broken by id).",
                *summary["notes"],
            ],
            {
                "Human votes": overview,
                "Tertiles": tertile_summary(result).set_index("tertile"),
                "Rater agreement (Fleiss' κ, Krippendorff's α; units = utterances with two or more ratings)": agreement,
            },
            {k: v for k, v in figures.items() if k.startswith("Ambiguity")},
        )
    )
    if result.panel is not None:
        panel = summary["panel"]
        rows = {
            "annotators": panel["annotators"],
            "rows": panel["rows"],
            "valid votes": panel["valid_votes"],
            "votes outside the set (dropped)": panel["votes_off_set"],
            "ids not in the corpus": panel["ids_not_in_corpus"],
            "corpus utterances without a panel row": panel["corpus_ids_not_in_panel"],
            "utterances without a valid vote": panel["utterances_without_valid_votes"],
        }
        out.append(
            Section(
                "Panel votes",
                [f"From {panel['file']}. Status counts: {_listing(panel['status'])}."],
                {
                    "Panel": pd.DataFrame(
                        {"value": list(rows.values())}, index=pd.Index(list(rows), name="panel")
                    )
                },
            )
        )
    explained = [f"{name}: {PROTOCOLS[name]}." for name in summary["protocols"]]
    scoring = [
        f"{name}: {info['scored']} utterance(s) scored" + "".join(
            f", {v} {k.replace('_', ' ')}" for k, v in info.items() if k.startswith("left_out") and v
        ) + "."
        for name, info in summary["scoring"].items()
        if name in summary["protocols"]
    ]  # fmt: skip
    metrics = result.metrics.set_index(["protocol", "source", "tertile"])
    metrics.index = [" / ".join(i) for i in metrics.index]
    metrics.index.name = "protocol / source / tertile"
    out.append(
        Section(
            "Distribution metrics",
            [
                *explained,
                *scoring,
                "JSD (base 2) and ECE: lower is better; Bhattacharyya coefficient, R², accuracy and F1 (of the "
                "argmax against the reference's argmax): higher is better; entropy: mean entropy of the source's "
                "distributions in bits. docs/ambiguity.md explains each.",
            ],
            {"metrics.csv": metrics},
            {k: v for k, v in figures.items() if k.startswith(("Metrics", "Reliability"))},
        )
    )
    if result.saturation is not None:
        saturation = result.saturation.set_index(["protocol", "source", "annotators"])
        saturation.index = [f"{p} / {s} / {a}" for p, s, a in saturation.index]
        saturation.index.name = "protocol / source / annotators"
        out.append(
            Section(
                "Saturation",
                [
                    "Sub-panels of 1..N annotators drawn at random from the panel (the same sub-panel for every "
                    "utterance), each scored as above; lines are the mean over draws, bands ± one standard "
                    "deviation. Where the curve flattens, more annotators add little."
                ],
                {"saturation.csv": saturation},
                {k: v for k, v in figures.items() if k.startswith("Saturation")},
            )
        )
    return out


def _norm_words(norm: str) -> str:
    return (
        "the log of the number of distinct labels present (0 when unanimous; the paper's code)"
        if norm == "present"
        else "log K, K the size of the label set"
    )


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    plt = _pyplot()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)
    return path


def plot_ambiguity(result: AmbiguityResult, path: Path) -> Path:
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(8, 4))
    bins = np.linspace(0, 1, 21)
    data = [result.ambiguity[result.tertile == name] for name in TERTILES]
    ax.hist(data, bins=bins, stacked=True, label=list(TERTILES))
    ax.set_xlabel(
        f"ambiguity ({'present labels' if result.config.entropy_norm == 'present' else 'log K'} norm)"
    )
    ax.set_ylabel("utterances")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(f"Ambiguity of the human votes (n = {sum(len(d) for d in data)})")
    ax.legend(title="tertile")
    return _save(fig, path)


def plot_metrics(metrics: pd.DataFrame, path: Path) -> Path:
    """Grouped bars: one row of panels per protocol, one panel per metric, tertiles on x, one bar per source."""
    plt = _pyplot()
    protocols = list(dict.fromkeys(metrics["protocol"]))
    fig, axes = plt.subplots(
        len(protocols), len(PLOTTED_METRICS), figsize=(3.4 * len(PLOTTED_METRICS), 3.2 * len(protocols)),
        squeeze=False,
    )  # fmt: skip
    groups = [*TERTILES, "all"]
    for row, protocol in enumerate(protocols):
        part = metrics[metrics["protocol"] == protocol]
        sources = [s for s in SOURCES if s in set(part["source"])]
        width = 0.8 / max(len(sources), 1)
        for col, metric in enumerate(PLOTTED_METRICS):
            ax = axes[row][col]
            for k, source in enumerate(sources):
                values = part[part["source"] == source].set_index("tertile").reindex(groups)[metric]
                offset = (k - (len(sources) - 1) / 2) * width
                ax.bar(
                    np.arange(len(groups)) + offset, values, width, label=source, color=SOURCE_COLOURS[source]
                )
            ax.set_xticks(range(len(groups)), groups)
            ax.set_xlabel("ambiguity tertile")
            ax.set_ylabel(METRIC_TITLES[metric])
            ax.set_title(f"{protocol}: {METRIC_TITLES[metric]}", fontsize=10)
            if col == 0:
                ax.legend(fontsize=8)
    return _save(fig, path)


def plot_reliability(result: AmbiguityResult, path: Path) -> Path:
    plt = _pyplot()
    keys = list(result.reliability)
    protocols = list(dict.fromkeys(p for p, _ in keys))
    columns = max(sum(1 for p, _ in keys if p == protocol) for protocol in protocols)
    fig, axes = plt.subplots(
        len(protocols), columns, figsize=(3.6 * columns, 3.4 * len(protocols)), squeeze=False
    )
    for row, protocol in enumerate(protocols):
        sources = [s for p, s in keys if p == protocol]
        for col in range(columns):
            ax = axes[row][col]
            if col >= len(sources):
                ax.axis("off")
                continue
            table = result.reliability[(protocol, sources[col])]
            centres = (table["lower"] + table["upper"]) / 2
            width = (table["upper"] - table["lower"]).iloc[0]
            ax.bar(centres, table["accuracy"].fillna(0), width * 0.9, color="tab:blue", label="accuracy")
            ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
            ece = calibration_error(table)
            ax.set_title(f"{protocol}: {sources[col]} (ECE {ece:.3f})", fontsize=10)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
            ax.set_xlabel("confidence (max probability)")
            ax.set_ylabel("accuracy of the argmax")
            if row == 0 and col == 0:
                ax.legend(fontsize=8, loc="upper left")
    return _save(fig, path)


def plot_saturation(saturation: pd.DataFrame, path: Path) -> Path:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for ax, metric in zip(axes, ("jsd", "bc"), strict=True):
        for (protocol, source), part in saturation.groupby(["protocol", "source"], sort=False):
            mean = part[metric].to_numpy()
            spread = part[f"{metric}_sd"].fillna(0).to_numpy()
            ax.plot(part["annotators"], mean, marker="o", label=f"{protocol}: {source}")
            ax.fill_between(part["annotators"], mean - spread, mean + spread, alpha=0.2)
        ax.set_xlabel("synthetic annotators")
        ax.set_ylabel(f"{METRIC_TITLES[metric]} (mean ± sd over draws)")
        ax.set_title(f"Saturation: {METRIC_TITLES[metric]} against the panel size")
        ax.set_xticks(sorted(saturation["annotators"].unique()))
        ax.legend(fontsize=8)
    return _save(fig, path)
