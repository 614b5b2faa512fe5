"""`melt preference report`: what the participants of the blind A/B test preferred (the MELT paper's Fig. 3).

Per group (emotion label) and overall: the answers, how many chose A, B and "neither", the share of A among the
A/B choices with its 95 % Wilson score interval, and the exact two-sided binomial test of that share against
50 % ("neither" is left out of share and test). Also: agreement between participants (Fleiss' κ over items
answered by at least two participants, allowing different numbers per item, and the raw pairwise agreement;
categories a/b/neither), and the time per item (from the item being shown to the answer, measured by the
server). Writes preference.png, time.png, preference.csv, answers.csv, summary.json and report.md/report.html.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from melt import __version__
from melt.corpus.labels import MELT_LABELS
from melt.corpus.schema import atomic_write, write_table
from melt.errors import MeltError
from melt.review.results import read_results
from melt.review.stats import binomial_test_half, fleiss_kappa, pairwise_agreement, wilson_interval

OVERALL = "overall"
CONFIDENCE = 0.95


@dataclass
class PreferenceReport:
    meta: dict[str, str]
    answers: pd.DataFrame  # one row per answer, joined to its item
    table: pd.DataFrame  # per group and overall
    participants: pd.DataFrame
    agreement: dict[str, Any]
    time: dict[str, Any]

    @property
    def source_a(self) -> str:
        return self.meta.get("source_a", "A")

    @property
    def source_b(self) -> str:
        return self.meta.get("source_b", "B")


def _row(group: str, part: pd.DataFrame) -> dict[str, Any]:
    a = int((part["choice"] == "a").sum())
    b = int((part["choice"] == "b").sum())
    neither = int((part["choice"] == "neither").sum())
    low, high = wilson_interval(a, a + b, CONFIDENCE)
    return {
        "group": group,
        "answers": len(part),
        "a": a,
        "b": b,
        "neither": neither,
        "share_a": a / (a + b) if a + b else float("nan"),
        "ci_low": low,
        "ci_high": high,
        "p_value": binomial_test_half(a, a + b),
        "items": int(part["item"].nunique()),
        "participants": int(part["participant"].nunique()),
    }


def _group_order(groups: list[str]) -> list[str]:
    known = [label for label in MELT_LABELS if label in groups]
    return known + sorted(g for g in groups if g not in known)


def analyse(results: str | Path) -> PreferenceReport:
    meta, items, answers = read_results(results)
    if answers.empty:
        raise MeltError("the results file has no answer yet", file=results)
    joined = answers.merge(
        items[["item", "id", "grp", "description_a", "description_b"]], on="item", how="left"
    )
    joined["group"] = joined["grp"].fillna("(none)").astype(str)
    joined = joined.drop(columns="grp")
    rows = [_row(g, joined[joined["group"] == g]) for g in _group_order(sorted(set(joined["group"])))]
    rows.append(_row(OVERALL, joined))
    table = pd.DataFrame(rows)

    people = []
    for (participant, number), part in joined.groupby(["participant", "number"], sort=False):
        row = _row(str(participant), part)
        seconds = part["seconds"].dropna()
        people.append(
            {
                "participant": participant,
                "number": int(number),
                "answered": len(part),
                "a": row["a"],
                "b": row["b"],
                "neither": row["neither"],
                "share_a": row["share_a"],
                "median_seconds": float(seconds.median()) if len(seconds) else float("nan"),
            }
        )
    participants = pd.DataFrame(people).sort_values("number").reset_index(drop=True)

    ratings = [list(part["choice"]) for _, part in joined.groupby("item")]
    kappa, kappa_items = fleiss_kappa(ratings)
    pairwise, pairs = pairwise_agreement(ratings)
    agreement = {
        "fleiss_kappa": kappa,
        "items_with_two_or_more_answers": kappa_items,
        "pairwise_agreement": pairwise,
        "answer_pairs": pairs,
        "categories": ["a", "b", "neither"],
    }
    seconds = joined["seconds"].dropna().to_numpy(dtype=float)
    time = {
        "answers_timed": len(seconds),
        "median_seconds": float(np.median(seconds)) if len(seconds) else float("nan"),
        "q25_seconds": float(np.quantile(seconds, 0.25)) if len(seconds) else float("nan"),
        "q75_seconds": float(np.quantile(seconds, 0.75)) if len(seconds) else float("nan"),
        "mean_seconds": float(seconds.mean()) if len(seconds) else float("nan"),
    }
    return PreferenceReport(meta, joined, table, participants, agreement, time)


def plot_preference(report: PreferenceReport, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    table = report.table.iloc[::-1].reset_index(drop=True)  # overall at the bottom
    figure = Figure(figsize=(8, 0.55 * len(table) + 1.6), dpi=110)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    share = table["share_a"].to_numpy(dtype=float) * 100
    low = table["ci_low"].to_numpy(dtype=float) * 100
    high = table["ci_high"].to_numpy(dtype=float) * 100
    colours = ["#333333" if g == OVERALL else "#4a6fa5" for g in table["group"]]
    positions = np.arange(len(table))
    axes.barh(positions, np.nan_to_num(share), color=colours, height=0.6)
    axes.errorbar(
        share, positions, xerr=[share - low, high - share], fmt="none", ecolor="black", capsize=3, linewidth=1
    )
    axes.axvline(50, color="#aa3333", linestyle="--", linewidth=1)
    for y, row in table.iterrows():
        text = f"{row['a']}/{row['a'] + row['b']}" + (f", neither {row['neither']}" if row["neither"] else "")
        axes.text(101, y, text, va="center", fontsize=8)
    axes.set_yticks(positions, table["group"])
    axes.set_xlim(0, 125)
    axes.set_xticks([0, 25, 50, 75, 100])
    axes.set_xlabel(
        f"% of A/B choices preferring A ({report.source_a}) over B ({report.source_b}); 95 % Wilson CI"
    )
    axes.set_title(f"Blind preference: {report.source_a} vs {report.source_b}", fontsize=10)
    figure.tight_layout()
    return atomic_write(path, lambda tmp: figure.savefig(tmp, format="png"))


def plot_time(report: PreferenceReport, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    seconds = report.answers["seconds"].dropna().to_numpy(dtype=float)
    figure = Figure(figsize=(7, 3.2), dpi=110)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    if len(seconds):
        top = float(np.quantile(seconds, 0.99)) if len(seconds) > 20 else float(seconds.max())
        axes.hist(np.clip(seconds, 0, top), bins=min(30, max(5, len(seconds) // 2)), color="#4a6fa5")
        axes.axvline(float(np.median(seconds)), color="black", linestyle="--", linewidth=1, label="median")
        axes.legend()
    axes.set_xlabel("seconds from showing an item to the answer (top 1 % clipped)")
    axes.set_ylabel("answers")
    figure.tight_layout()
    return atomic_write(path, lambda tmp: figure.savefig(tmp, format="png"))


def _percent(value: float) -> str:
    return "–" if value != value else f"{value:.1%}"


def _json_ready(value: Any) -> Any:
    """`value` with every NaN or infinite float replaced by None (JSON null)."""
    if isinstance(value, dict):
        return {key: _json_ready(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(item) for item in value]
    if isinstance(value, float | np.floating) and not np.isfinite(value):
        return None
    return value


def _fixed(value: float, digits: int) -> str:
    return "undefined" if value != value else f"{value:.{digits}f}"


def _p(value: float) -> str:
    if value != value:
        return "–"
    return "< 0.0001" if value < 1e-4 else f"{value:.4f}"


def write_preference_report(results: str | Path, out_dir: str | Path) -> PreferenceReport:
    from melt.acoustics.features import file_sha256
    from melt.analysis.report import Section, write_report

    results = Path(results)
    out_dir = Path(out_dir)
    report = analyse(results)
    out_dir.mkdir(parents=True, exist_ok=True)
    preference_png = plot_preference(report, out_dir / "preference.png")
    time_png = plot_time(report, out_dir / "time.png")
    write_table(report.table, out_dir / "preference.csv")
    answers = report.answers.assign(
        answered_at=pd.to_datetime(report.answers["answered_at"], unit="s", utc=True).dt.strftime(
            "%Y-%m-%dT%H:%M:%SZ"
        )
    )
    write_table(
        answers[
            ["number", "participant", "item", "id", "group", "choice", "a_first", "seconds", "answered_at"]
        ],
        out_dir / "answers.csv",
    )

    pairs_path = report.meta.get("pairs_path")
    pairs_now = None
    if pairs_path and Path(pairs_path).is_file():
        pairs_now = file_sha256(pairs_path) == report.meta.get("pairs_sha256")
    provenance = {
        "melt_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "results": str(results.absolute()),
        "results_sha256": file_sha256(results),
        "answers": len(report.answers),
        "last_answer": answers["answered_at"].max(),
        "pairs": pairs_path,
        "pairs_sha256": report.meta.get("pairs_sha256"),
        "pairs_file_unchanged": pairs_now,
        "test_started": report.meta.get("created"),
        "server_melt_version": report.meta.get("melt_version"),
        "settings": {
            "source_a": report.source_a,
            "source_b": report.source_b,
            "seed": report.meta.get("seed"),
            "neither_offered": report.meta.get("allow_neither") == "1",
            "interval": "Wilson score, 95 %",
            "test": "exact binomial, two-sided, against 50 %; 'neither' left out",
            "agreement": "Fleiss' kappa (unequal raters per item) and pairwise agreement over a/b/neither",
        },
    }
    summary = {
        "provenance": provenance,
        "groups": json.loads(report.table.to_json(orient="records")),
        "participants": json.loads(report.participants.to_json(orient="records")),
        "agreement": report.agreement,
        "time": report.time,
    }
    # NaN (κ with no item answered twice, times with no timed answer) is not JSON: strict readers refuse it.
    text = json.dumps(_json_ready(summary), indent=2, ensure_ascii=False, allow_nan=False)
    atomic_write(out_dir / "summary.json", lambda tmp: tmp.write_text(text + "\n", encoding="utf-8"))

    overall = report.table.iloc[-1]
    shown = report.table.assign(
        share_a=report.table["share_a"].map(_percent),
        ci=[
            f"{_percent(lo)} – {_percent(hi)}"
            for lo, hi in zip(report.table["ci_low"], report.table["ci_high"], strict=True)
        ],
        p_value=report.table["p_value"].map(_p),
    )[["group", "answers", "a", "b", "neither", "share_a", "ci", "p_value", "items", "participants"]]
    shown = shown.rename(columns={"share_a": "A share", "ci": "95 % CI (Wilson)", "p_value": "p (vs 50 %)"})
    sections = [
        Section(
            title=f"Preference for A ({report.source_a}) over B ({report.source_b})",
            paragraphs=[
                f"Over all answers, participants chose A in {overall['a']} and B in {overall['b']} of "
                f"{overall['a'] + overall['b']} A/B choices: A share {_percent(overall['share_a'])} "
                f"(95 % Wilson CI {_percent(overall['ci_low'])} – {_percent(overall['ci_high'])}; exact two-sided "
                f"binomial test against 50 %: p = {_p(overall['p_value'])}). "
                f"'Neither' was chosen {overall['neither']} times and is left out of share and test.",
                "Answers are pooled over participants; an item answered by several participants counts once per "
                "answer, so the intervals treat answers as independent, which they are only approximately.",
            ],
            tables={"Per group (the pairs table's group column) and overall": shown.set_index("group")},
            figures={"Share of A/B choices preferring A, with 95 % Wilson intervals": preference_png},
        ),
        Section(
            title="Agreement between participants",
            paragraphs=[
                f"Fleiss' κ over the {report.agreement['items_with_two_or_more_answers']} items answered by at "
                f"least two participants (categories a, b, neither; unequal numbers of answers per item allowed): "
                f"{_fixed(report.agreement['fleiss_kappa'], 3)}. Raw pairwise agreement: "
                f"{_percent(report.agreement['pairwise_agreement'])} of {report.agreement['answer_pairs']} pairs "
                "of answers to the same item."
            ],
        ),
        Section(
            title="Time per item",
            paragraphs=[
                f"From the server showing an item to the answer: median {_fixed(report.time['median_seconds'], 1)} s "
                f"(quartiles {_fixed(report.time['q25_seconds'], 1)} – {_fixed(report.time['q75_seconds'], 1)} s, "
                f"mean {_fixed(report.time['mean_seconds'], 1)} s) over {report.time['answers_timed']} answers. "
                "It includes "
                "playing the clip; an item shown again after a break counts from its last showing."
            ],
            tables={
                "Participants": report.participants.assign(
                    share_a=report.participants["share_a"].map(_percent)
                ).set_index("participant")
            },
            figures={"Seconds per answer": time_png},
        ),
        Section(
            title="How this was made",
            paragraphs=[
                f"melt {__version__}, {provenance['created']}. Results: {provenance['results']} (sha256 "
                f"{provenance['results_sha256']}; {provenance['answers']} answers, the last at "
                f"{provenance['last_answer']}). Pairs table: {pairs_path} (sha256 {provenance['pairs_sha256']}"
                + (
                    ", unchanged)."
                    if pairs_now
                    else ", changed since the test started)."
                    if pairs_now is False
                    else ", not found here)."
                )
                + f" Seed {provenance['settings']['seed']}; 'neither' "
                + ("offered" if provenance["settings"]["neither_offered"] else "not offered")
                + ". Interval: Wilson score 95 %. Test: exact binomial, two-sided, against 50 %. Agreement: "
                "Fleiss' κ and pairwise agreement over a/b/neither.",
            ],
        ),
    ]
    write_report(out_dir, f"Blind preference test: {report.source_a} vs {report.source_b}", sections)
    return report
