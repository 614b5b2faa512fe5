"""Scoring synthetic, human and combined distributions per ambiguity tertile, two ways.

`paper`: each source against the full human distribution, as the Scaling Ambiguity paper does. It flatters
`combined`, which contains those very human votes.
`split-half`: per utterance the human raters are split at random into two disjoint halves; the larger half is the
reference, and the candidates are the other half alone (`human`), the panel alone (`synthetic`) and the other
half plus the panel (`combined`). No candidate contains a reference vote. Repeated per seed and averaged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from melt.agreement import fleiss_kappa
from melt.ambiguity.config import AmbiguityConfig
from melt.ambiguity.distributions import (
    TERTILES,
    HumanVotes,
    PanelVotes,
    ambiguity,
    normalise,
    pool,
    read_human_votes,
    read_panel_votes,
    tertiles,
)
from melt.ambiguity.metrics import (
    SCORE_NAMES,
    bhattacharyya,
    distribution_scores,
    jensen_shannon,
    reliability,
)
from melt.analysis.metrics import krippendorff_alpha_nominal

PROTOCOLS: dict[str, str] = {
    "paper": "each source against the full human distribution (the paper's way; flatters combined, which "
    "contains those human votes)",
    "split-half": "human raters split at random into two disjoint halves per utterance; reference = the larger "
    "half; human = the other half, synthetic = the panel, combined = the other half plus the panel; averaged "
    "over seeds",
}
SOURCES: tuple[str, ...] = ("human", "synthetic", "combined")
METRIC_COLUMNS: tuple[str, ...] = ("protocol", "source", "tertile", "n", *SCORE_NAMES)


@dataclass
class HalfSplit:
    """One seeded split of every utterance's raters into a reference half and the other half."""

    seed: int
    #: per rater (in `HumanVotes` order): True when in the reference half
    in_reference: np.ndarray
    reference: np.ndarray
    other: np.ndarray
    #: utterances with at least two raters, the only ones that can be split
    eligible: np.ndarray


def split_half(human: HumanVotes, seed: int) -> HalfSplit:
    """Shuffle each utterance's raters with `seed`; the first ⌈r/2⌉ form the reference, the other ⌊r/2⌋ the
    candidate half. The larger half is the reference because a steadier reference helps every candidate alike."""
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(len(human.item)), human.item))
    per_item = human.raters_per_item
    first = np.concatenate([[0], np.cumsum(per_item)[:-1]])
    position = np.arange(len(order)) - first[human.item[order]]
    in_reference = np.empty(len(order), dtype=bool)
    in_reference[order] = position < np.ceil(per_item[human.item[order]] / 2)
    reference = np.zeros((len(human.ids), len(human.labels)))
    other = np.zeros_like(reference)
    np.add.at(reference, human.item[in_reference], human.weights[in_reference])
    np.add.at(other, human.item[~in_reference], human.weights[~in_reference])
    return HalfSplit(seed, in_reference, reference, other, per_item >= 2)


def score_by_tertile(
    protocol: str, source: str, predicted: np.ndarray, reference: np.ndarray, tertile: np.ndarray, bins: int
) -> list[dict]:
    """One metrics row per tertile and one for all: `n` rows scored, then the `distribution_scores`."""
    rows = []
    for name in (*TERTILES, "all"):
        mask = np.ones(len(predicted), dtype=bool) if name == "all" else tertile == name
        rows.append(
            {
                "protocol": protocol,
                "source": source,
                "tertile": name,
                "n": int(mask.sum()),
                **distribution_scores(predicted[mask], reference[mask], bins),
            }
        )
    return rows


@dataclass
class AmbiguityResult:
    config: AmbiguityConfig
    human: HumanVotes
    panel: PanelVotes | None
    ambiguity: np.ndarray
    tertile: np.ndarray
    #: one row per protocol, source and tertile (split-half: averaged over seeds)
    metrics: pd.DataFrame
    #: split-half rows per seed, before averaging
    metrics_per_seed: pd.DataFrame
    #: (protocol, source) -> reliability table of all tertiles (split-half: every seed pooled)
    reliability: dict[tuple[str, str], pd.DataFrame]
    #: Fleiss' κ and Krippendorff's α of the human raters and of the panel, per tertile
    agreement: pd.DataFrame
    #: JSD and BC against the number of synthetic annotators (None without a panel)
    saturation: pd.DataFrame | None
    #: utterances scored and left out, per protocol
    scoring: dict = field(default_factory=dict)

    @property
    def labels(self) -> tuple[str, ...]:
        return self.human.labels

    def distributions(self) -> pd.DataFrame:
        """distributions.parquet: per utterance its ambiguity, tertile, vote counts and one column per source and
        label (`human_anger`, ..., `synthetic_anger`, ..., `combined_anger`, ...); NaN where a source has no vote."""
        human_sums = self.human.sums
        table = pd.DataFrame(
            {
                "id": pd.Series(self.human.ids, dtype="string"),
                "tertile": pd.Series(self.tertile, dtype="string"),
                "ambiguity": pd.Series(self.ambiguity, dtype="Float64"),
                "human_raters": pd.Series(self.human.raters_per_item, dtype="Int64"),
                "human_weight": human_sums.sum(axis=1),
            }
        )
        sources = {"human": normalise(human_sums)}
        if self.panel is not None:
            synthetic_sums = self.panel.sums()
            table["panel_votes"] = pd.Series((self.panel.choice >= 0).sum(axis=1), dtype="Int64")
            table["panel_weight"] = synthetic_sums.sum(axis=1)
            sources["synthetic"] = normalise(synthetic_sums)
            sources["combined"] = pool(human_sums, synthetic_sums, self.config.synthetic_weight)
        columns = {
            f"{source}_{label}": values[:, k]
            for source, values in sources.items()
            for k, label in enumerate(self.labels)
        }
        return pd.concat([table, pd.DataFrame(columns)], axis=1)


def analyse_ambiguity(
    corpus: pd.DataFrame,
    votes: str | Path | PanelVotes | None = None,
    config: AmbiguityConfig | None = None,
    *,
    source: str | Path = "<table>",
    progress: bool = False,
) -> AmbiguityResult:
    """Distributions, ambiguity, tertiles, agreement, both protocols and the saturation curve of a corpus table
    with a `votes` column and, optionally, a panel's votes (a run folder, its votes.parquet, or `PanelVotes`).

    `source` names the table in error messages; `progress` shows a bar on standard error for the seeded loops."""
    config = config or AmbiguityConfig()
    human = read_human_votes(corpus, config.labels, source=source)
    if votes is None or isinstance(votes, PanelVotes):
        panel = votes
    else:
        panel = read_panel_votes(votes, human.ids, config.labels)
    human_sums = human.sums
    ambiguity_values = ambiguity(human_sums, config.entropy_norm)
    tertile = tertiles(ambiguity_values, human.ids)
    has_human = human.raters_per_item > 0
    synthetic_sums = panel.sums() if panel is not None else None
    has_synthetic = synthetic_sums.sum(axis=1) > 0 if synthetic_sums is not None else np.ones_like(has_human)
    steps = len(config.seeds) + (_saturation_steps(panel, config) if panel is not None else 0)
    with _progress_bar(progress, steps) as advance:
        splits = []
        for seed in config.seeds:
            splits.append(split_half(human, seed))
            advance()
        metrics, per_seed, reliabilities, scoring = _score(
            human_sums, synthetic_sums, splits, tertile, has_human, has_synthetic, config
        )
        saturation = (
            _saturation(human_sums, panel, splits, has_human & has_synthetic, config, advance)
            if panel is not None
            else None
        )
    return AmbiguityResult(
        config=config,
        human=human,
        panel=panel,
        ambiguity=ambiguity_values,
        tertile=tertile,
        metrics=metrics,
        metrics_per_seed=per_seed,
        reliability=reliabilities,
        agreement=_agreement(human, panel, tertile),
        saturation=saturation,
        scoring=scoring,
    )


def _score(
    human_sums: np.ndarray,
    synthetic_sums: np.ndarray | None,
    splits: list[HalfSplit],
    tertile: np.ndarray,
    has_human: np.ndarray,
    has_synthetic: np.ndarray,
    config: AmbiguityConfig,
) -> tuple[pd.DataFrame, pd.DataFrame, dict, dict]:
    bins, weight = config.ece_bins, config.synthetic_weight
    rows: list[dict] = []
    reliabilities: dict[tuple[str, str], pd.DataFrame] = {}
    scoring: dict[str, dict] = {}
    if synthetic_sums is not None:
        scored = has_human & has_synthetic
        scoring["paper"] = {
            "scored": int(scored.sum()),
            "left_out_without_human_votes": int((~has_human).sum()),
            "left_out_without_valid_panel_votes": int((has_human & ~has_synthetic).sum()),
        }
        reference = normalise(human_sums[scored])
        candidates = {
            "synthetic": normalise(synthetic_sums[scored]),
            "combined": pool(human_sums[scored], synthetic_sums[scored], weight),
        }
        for name, predicted in candidates.items():
            rows += score_by_tertile("paper", name, predicted, reference, tertile[scored], bins)
            reliabilities[("paper", name)] = reliability(predicted, reference, bins)
    eligible = splits[0].eligible & has_synthetic
    scoring["split-half"] = {
        "scored": int(eligible.sum()),
        "seeds": list(config.seeds),
        "left_out_without_human_votes": int((~has_human).sum()),
        "left_out_one_rater": int((has_human & ~splits[0].eligible).sum()),
        "left_out_without_valid_panel_votes": int((splits[0].eligible & ~has_synthetic).sum())
        if synthetic_sums is not None
        else 0,
    }
    per_seed: list[dict] = []
    pooled: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {}
    for split in splits:
        reference = normalise(split.reference[eligible])
        candidates = {"human": normalise(split.other[eligible])}
        if synthetic_sums is not None:
            candidates["synthetic"] = normalise(synthetic_sums[eligible])
            candidates["combined"] = pool(split.other[eligible], synthetic_sums[eligible], weight)
        for name, predicted in candidates.items():
            for row in score_by_tertile("split-half", name, predicted, reference, tertile[eligible], bins):
                per_seed.append({"seed": split.seed, **row})
            pooled.setdefault(name, ([], []))
            pooled[name][0].append(predicted)
            pooled[name][1].append(reference)
    for name, (predicted, reference) in pooled.items():
        reliabilities[("split-half", name)] = reliability(np.vstack(predicted), np.vstack(reference), bins)
    per_seed_table = pd.DataFrame(per_seed, columns=["seed", *METRIC_COLUMNS])
    averaged = (
        per_seed_table.groupby(["protocol", "source", "tertile"], sort=False)[["n", *SCORE_NAMES]]
        .mean()
        .reset_index()
    )
    averaged["n"] = averaged["n"].round().astype(int)
    metrics = pd.concat([pd.DataFrame(rows, columns=list(METRIC_COLUMNS)), averaged], ignore_index=True)
    return metrics[list(METRIC_COLUMNS)], per_seed_table, reliabilities, scoring


def _saturation_steps(panel: PanelVotes, config: AmbiguityConfig) -> int:
    size = len(panel.annotators)
    return sum(1 if m == size else config.saturation_draws for m in range(1, size + 1))


def _saturation(
    human_sums: np.ndarray,
    panel: PanelVotes,
    splits: list[HalfSplit],
    scored: np.ndarray,
    config: AmbiguityConfig,
    advance: Callable[[], None],
) -> pd.DataFrame:
    """JSD and BC of synthetic and combined against the reference of each protocol, for sub-panels of 1..N
    annotators drawn at random (seeded by the first seed, the size and the draw). Draw d of the split-half
    protocol uses the split of seed d mod len(seeds). An utterance counts for a sub-panel only when that
    sub-panel gave it a valid vote, so `n` may shrink for small panels."""
    size = len(panel.annotators)
    weight = config.synthetic_weight
    rows = []
    for m in range(1, size + 1):
        draws = 1 if m == size else config.saturation_draws
        for draw in range(draws):
            chosen = np.sort(np.random.default_rng([config.seeds[0], m, draw]).choice(size, m, replace=False))
            synthetic = panel.sums(chosen)
            voted = synthetic.sum(axis=1) > 0
            split = splits[draw % len(splits)]
            protocols = {
                "paper": (scored & voted, human_sums, human_sums),
                "split-half": (scored & voted & split.eligible, split.reference, split.other),
            }
            for protocol, (mask, reference_sums, human_part) in protocols.items():
                reference = normalise(reference_sums[mask])
                candidates = {
                    "synthetic": normalise(synthetic[mask]),
                    "combined": pool(human_part[mask], synthetic[mask], weight),
                }
                for name, predicted in candidates.items():
                    rows.append(
                        {
                            "protocol": protocol,
                            "source": name,
                            "annotators": m,
                            "draw": draw,
                            "n": int(mask.sum()),
                            "jsd": float(jensen_shannon(predicted, reference).mean())
                            if mask.any()
                            else np.nan,
                            "bc": float(bhattacharyya(predicted, reference).mean()) if mask.any() else np.nan,
                        }
                    )
            advance()
    draws_table = pd.DataFrame(rows)
    grouped = draws_table.groupby(["protocol", "source", "annotators"], sort=False)
    return grouped.agg(
        draws=("draw", "size"),
        n=("n", "mean"),
        jsd=("jsd", "mean"),
        jsd_sd=("jsd", "std"),
        bc=("bc", "mean"),
        bc_sd=("bc", "std"),
    ).reset_index()


def _agreement(human: HumanVotes, panel: PanelVotes | None, tertile: np.ndarray) -> pd.DataFrame:
    """Fleiss' κ and Krippendorff's α (nominal) of the human raters (each by their heaviest label) and of the
    panel's annotators, per tertile; `units` counts the utterances with at least two ratings."""
    raters = {"human raters": human.rater_labels()}
    if panel is not None:
        raters["panel"] = panel.labels_per_item(human.labels)
    position = {label: k for k, label in enumerate(human.labels)}
    rows = []
    for name, ratings in raters.items():
        counts = np.zeros((len(ratings), len(position)))
        for item, labels in enumerate(ratings):
            for label in labels:
                counts[item, position[label]] += 1
        for part in (*TERTILES, "all"):
            chosen = [i for i in range(len(ratings)) if part == "all" or tertile[i] == part]
            units = [ratings[i] for i in chosen if len(ratings[i]) >= 2]
            rows.append(
                {
                    "raters": name,
                    "tertile": part,
                    "units": len(units),
                    "fleiss_kappa": fleiss_kappa(counts[chosen]) if chosen else float("nan"),
                    "krippendorff_alpha": krippendorff_alpha_nominal(units) if units else float("nan"),
                }
            )
    return pd.DataFrame(rows)


@contextmanager
def _progress_bar(enabled: bool, total: int) -> Iterator[Callable[[], None]]:
    """A rich bar on standard error when `enabled`; yields the function that advances it by one step."""
    if not enabled:
        yield lambda: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from melt import terminal

    columns = (TextColumn("ambiguity"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=terminal.console(stderr=True)) as bar:
        task = bar.add_task("ambiguity", total=total)
        yield lambda: bar.update(task, advance=1)
