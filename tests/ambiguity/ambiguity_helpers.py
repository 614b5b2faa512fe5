"""A corpus with per-rater human votes and a panel's votes.parquet, built in code, and a checker of every output
of `melt ambiguity` that recomputes the numbers from the votes with the metric functions.

`check_outputs` takes any corpus table with a `votes` column, so an IEMOCAP-layout corpus loaded by the corpora
branch can be swapped in for `synthetic_corpus()`.
"""

from __future__ import annotations

import hashlib
import json
import math
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from melt.ambiguity import metrics
from melt.ambiguity.distributions import read_human_votes
from melt.ambiguity.evaluate import split_half
from melt.corpus.labels import MELT_LABEL_SET, MELT_LABELS, LabelSet

METRIC_COLUMNS = ["protocol", "source", "tertile", "n", "jsd", "bc", "r2", "ece", "acc", "f1_macro",
                  "f1_weighted", "entropy"]  # fmt: skip
PNG = b"\x89PNG\r\n\x1a\n"


def synthetic_corpus(n: int = 90, annotators: int = 8, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Utterances with 1–5 human raters (some listing two labels, some off the label set) and a panel that agrees
    with the raters' main emotion more often on clear utterances. Every utterance id is in both."""
    rng = np.random.default_rng(seed)
    rows, panel = [], []
    for i in range(n):
        truth = MELT_LABELS[i % 7]
        clarity = (i % 3) / 2  # 0, ½, 1: how often a rater picks the main emotion
        votes = {}
        for r in range(1 + i % 5):
            label = truth if rng.random() < 0.35 + 0.6 * clarity else MELT_LABELS[rng.integers(7)]
            if rng.random() < 0.15:
                votes[f"E{r}"] = {label: 0.5, MELT_LABELS[rng.integers(7)]: 0.5}
            elif rng.random() < 0.05:
                votes[f"E{r}"] = {"frustration": 1.0}
            else:
                votes[f"E{r}"] = {label: 1.0}
        rows.append(
            {"id": f"Ses01F_{i:03d}", "speaker": f"s{i % 4}", "text": f"line {i}", "votes": json.dumps(votes)}
        )
        for a in range(annotators):
            good = rng.random() < 0.3 + 0.5 * clarity
            label = truth if good else MELT_LABELS[rng.integers(7)]
            status = "invalid" if rng.random() < 0.05 else "ok"
            panel.append(
                {
                    "id": f"Ses01F_{i:03d}",
                    "annotator": a,
                    "persona": ["tone+content", "tone", "words", "cues", "what vs how"][a % 5],
                    "temperature": 0.2 + 0.1 * a,
                    "label": label if status == "ok" else None,
                    "status": status,
                    "reason": None if status == "ok" else "unparseable",
                }
            )
    return pd.DataFrame(rows), pd.DataFrame(panel)


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def independent_human_distributions(table: pd.DataFrame, labels: LabelSet) -> dict[str, np.ndarray]:
    """Human distributions computed here from the votes JSON, without melt's reader: each rater's weights scaled
    to sum 1, labels outside the set dropped, p_c = weight for c / weight kept."""
    out = {}
    for utterance, text in zip(table["id"], table["votes"], strict=True):
        if not isinstance(text, str) or not text.strip():
            continue
        sums = np.zeros(len(labels.labels))
        for vote in json.loads(text).values():
            shares = {vote: 1.0} if isinstance(vote, str) else vote
            total = sum(shares.values())
            for label, weight in shares.items():
                name = labels.normalize(label)
                if total > 0 and name in labels.labels:
                    sums[labels.labels.index(name)] += weight / total
        if sums.sum() > 0:
            out[str(utterance)] = sums / sums.sum()
    return out


def check_outputs(
    out: Path,
    table: pd.DataFrame,
    panel: pd.DataFrame | None,
    *,
    corpus_file: Path,
    votes_file: Path | None,
    labels: LabelSet = MELT_LABEL_SET,
    synthetic_weight: float = 1.0,
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4),
    saturation_draws: int = 5,
) -> dict:
    """Check every output of one `melt ambiguity` run against numbers recomputed from the inputs."""
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    metrics_csv = pd.read_csv(out / "metrics.csv")
    distributions = pd.read_parquet(out / "distributions.parquet")
    names = list(labels.labels)

    # Provenance.
    made = summary["provenance"]
    assert made["melt_version"]
    datetime.fromisoformat(made["created"])
    assert made["command"].startswith("melt ambiguity ")
    assert made["inputs"]["corpus"]["sha256"] == sha256(corpus_file)
    if votes_file is not None:
        assert made["inputs"]["votes"]["sha256"] == sha256(votes_file)
    assert made["settings"]["synthetic_weight"] == synthetic_weight
    assert made["settings"]["seeds"] == list(seeds)
    assert summary["labels"] == names

    # distributions.parquet: one row per corpus utterance; human columns as computed independently.
    assert distributions["id"].tolist() == table["id"].astype(str).tolist()
    human_columns = [f"human_{label}" for label in names]
    expected_human = independent_human_distributions(table, labels)
    human = distributions.set_index("id")[human_columns]
    for utterance, row in human.iterrows():
        if utterance in expected_human:
            assert row.to_numpy() == pytest.approx(expected_human[utterance], abs=1e-12)
        else:
            assert row.isna().all()
    defined = distributions[human_columns].notna().all(axis=1).to_numpy()
    assert defined.sum() == summary["human"]["utterances_with_votes"]
    p_human = distributions[human_columns].to_numpy()
    ambiguity = metrics.normalised_entropy(
        p_human[defined], summary["provenance"]["settings"]["entropy_norm"]
    )
    assert distributions["ambiguity"].to_numpy(dtype=float)[defined] == pytest.approx(ambiguity)
    tertile = distributions["tertile"].astype(object).where(distributions["tertile"].notna(), None).to_numpy()
    sizes = [int((tertile == t).sum()) for t in ("low", "medium", "high")]
    assert sum(sizes) == defined.sum() and max(sizes) - min(sizes) <= 1
    assert [t["n"] for t in summary["tertiles"]] == sizes
    # Tertiles follow the ambiguity ranking.
    by_tertile = {t: ambiguity[tertile[defined] == t] for t in ("low", "medium", "high")}
    assert by_tertile["low"].max() <= by_tertile["medium"].min() + 1e-12
    assert by_tertile["medium"].max() <= by_tertile["high"].min() + 1e-12

    # metrics.csv.
    assert metrics_csv.columns.tolist() == METRIC_COLUMNS
    assert set(metrics_csv["tertile"]) == {"low", "medium", "high", "all"}
    with_panel = panel is not None
    assert summary["synthetic_source"] is with_panel
    expected_pairs = {("split-half", "human")}
    if with_panel:
        expected_pairs |= {("paper", "synthetic"), ("paper", "combined"), ("split-half", "synthetic"),
                           ("split-half", "combined")}  # fmt: skip
    assert set(zip(metrics_csv["protocol"], metrics_csv["source"], strict=True)) == expected_pairs
    row_of = metrics_csv.set_index(["protocol", "source", "tertile"])

    def assert_row(protocol, source, tertile_name, predicted, reference):
        row = row_of.loc[(protocol, source, tertile_name)]
        assert row["n"] == len(predicted)
        scores = metrics.distribution_scores(predicted, reference)
        for name, value in scores.items():
            if math.isnan(value):
                assert math.isnan(row[name]), (protocol, source, tertile_name, name)
            else:
                assert row[name] == pytest.approx(value, abs=1e-9), (protocol, source, tertile_name, name)

    if with_panel:
        synthetic = distributions[[f"synthetic_{label}" for label in names]].to_numpy()
        combined = distributions[[f"combined_{label}" for label in names]].to_numpy()
        scored = defined & ~np.isnan(synthetic).any(axis=1)
        assert summary["scoring"]["paper"]["scored"] == scored.sum()
        # combined recomputed from the vote weights: human rater weight + W times the synthetic votes' weight
        votes = distributions["panel_weight"].to_numpy(dtype=float)
        weights = distributions["human_weight"].to_numpy()
        for i in np.flatnonzero(scored):
            pooled = p_human[i] * weights[i] + synthetic_weight * synthetic[i] * votes[i]
            assert combined[i] == pytest.approx(pooled / pooled.sum())
        for tertile_name in ("low", "medium", "high", "all"):
            mask = scored & ((tertile == tertile_name) if tertile_name != "all" else True)
            assert_row("paper", "synthetic", tertile_name, synthetic[mask], p_human[mask])
            assert_row("paper", "combined", tertile_name, combined[mask], p_human[mask])
    else:
        scored = defined
        assert not any(c.startswith("synthetic_") for c in distributions.columns)

    # Split-half: the mean over seeds of each source scored against the reference half.
    human_votes = read_human_votes(table, labels)
    panel_sums = None
    if with_panel:
        panel_sums = np.nan_to_num(synthetic) * votes[:, None]
    for tertile_name in ("low", "medium", "high", "all"):
        per_source: dict[str, list[dict]] = {}
        for seed in seeds:
            split = split_half(human_votes, seed)
            mask = split.eligible & scored & ((tertile == tertile_name) if tertile_name != "all" else True)
            reference = split.reference[mask] / split.reference[mask].sum(axis=1, keepdims=True)
            other = split.other[mask] / split.other[mask].sum(axis=1, keepdims=True)
            candidates = {"human": other}
            if with_panel:
                candidates["synthetic"] = synthetic[mask]
                pooled = split.other[mask] + synthetic_weight * panel_sums[mask]
                candidates["combined"] = pooled / pooled.sum(axis=1, keepdims=True)
            for source, predicted in candidates.items():
                per_source.setdefault(source, []).append(metrics.distribution_scores(predicted, reference))
        for source, runs in per_source.items():
            row = row_of.loc[("split-half", source, tertile_name)]
            for name in metrics.SCORE_NAMES:
                values = [r[name] for r in runs if not math.isnan(r[name])]
                if values:
                    assert row[name] == pytest.approx(np.mean(values), abs=1e-9), (source, tertile_name, name)
                else:
                    assert math.isnan(row[name])
    one_rater = int((human_votes.raters_per_item == 1).sum())
    assert summary["scoring"]["split-half"]["left_out_one_rater"] == one_rater
    if one_rater:
        assert any("single rater" in note for note in summary["notes"])

    # Agreement, plots, report.
    assert {a["raters"] for a in summary["agreement"]} == (
        {"human raters", "panel"} if with_panel else {"human raters"}
    )
    figures = ["ambiguity.png", "metrics.png", "reliability.png"] + (["saturation.png"] if with_panel else [])
    for name in figures:
        assert (out / name).read_bytes()[:8] == PNG
    page = (out / "report.html").read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") == len(figures)
    assert "split-half" in page and summary["provenance"]["inputs"]["corpus"]["sha256"] in page
    if not with_panel:
        assert any("No synthetic source was given" in note for note in summary["notes"])
        assert "No synthetic source was given" in page
        assert not (out / "saturation.csv").exists()
        return summary

    # Saturation: 1..N annotators; the whole panel is one draw and equals the paper's synthetic row.
    saturation = pd.read_csv(out / "saturation.csv")
    size = summary["panel"]["annotators"]
    part = saturation[(saturation["protocol"] == "paper") & (saturation["source"] == "synthetic")]
    assert part["annotators"].tolist() == list(range(1, size + 1))
    assert part["draws"].tolist() == [saturation_draws] * (size - 1) + [1]
    full = part[part["annotators"] == size].iloc[0]
    assert full["jsd"] == pytest.approx(row_of.loc[("paper", "synthetic", "all"), "jsd"])
    assert full["bc"] == pytest.approx(row_of.loc[("paper", "synthetic", "all"), "bc"])
    assert full["n"] == row_of.loc[("paper", "synthetic", "all"), "n"]
    assert ((saturation["jsd"] >= 0) & (saturation["jsd"] <= 1)).all()
    return summary
