"""Emotion distributions per utterance from human votes (the corpus `votes` column) and panel votes
(`RUN_DIR/votes.parquet`), ambiguity, and tertiles.

Votes are read onto a label set; a vote for a label outside it is dropped and counted, never coerced. Human
raters keep their weights (a rater listing two labels gives each ½); a panel vote weighs its annotator's weight
(the votes file's optional `weight` column, from a panel file's `weights`; 1 without it). p_c is the weight of the
votes for c divided by the weight of all the utterance's votes in the set.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from melt.ambiguity.metrics import normalised_entropy
from melt.corpus.labels import LabelSet
from melt.corpus.schema import VOTES, check_ids, read_any, require_columns, votes_of
from melt.errors import MeltError

TERTILES: tuple[str, ...] = ("low", "medium", "high")
#: Columns of RUN_DIR/votes.parquet that are read (persona and temperature are optional here).
PANEL_COLUMNS: tuple[str, ...] = ("id", "annotator", "label", "status")
#: A rater's weights may sum this far from 1 before they are counted as renormalised.
WEIGHT_TOLERANCE = 1e-6


@dataclass
class HumanVotes:
    """Per-rater human votes on a label set: rater r voted for utterance `item[r]` with `weights[r]` (length K)."""

    ids: np.ndarray
    labels: tuple[str, ...]
    item: np.ndarray
    rater: list[str]
    weights: np.ndarray
    #: what was dropped or repaired, for summary.json
    counts: dict = field(default_factory=dict)

    @property
    def sums(self) -> np.ndarray:
        """(n, K): the weight of the human votes for each label."""
        out = np.zeros((len(self.ids), len(self.labels)))
        np.add.at(out, self.item, self.weights)
        return out

    @property
    def raters_per_item(self) -> np.ndarray:
        return np.bincount(self.item, minlength=len(self.ids))

    def rater_labels(self) -> list[list[str]]:
        """Each utterance's raters as one label each (their heaviest, ties by label-set order), for κ and α."""
        out: list[list[str]] = [[] for _ in self.ids]
        best = (self.weights >= self.weights.max(axis=1, keepdims=True) - 1e-9).argmax(axis=1)
        for item, label in zip(self.item, best, strict=True):
            out[item].append(self.labels[label])
        return out


@dataclass
class PanelVotes:
    """Valid panel votes: `choice[i, a]` is the label index annotator `annotators[a]` gave utterance i, −1 if none."""

    annotators: list[str]
    choice: np.ndarray
    personas: dict[str, str]
    temperatures: dict[str, float]
    counts: dict = field(default_factory=dict)
    #: each annotator's vote weight, in the order of `annotators` (None: 1 each)
    weights: np.ndarray | None = None

    def sums(self, annotators: np.ndarray | None = None) -> np.ndarray:
        """(n, K): weighted valid votes per label, from all annotators or the given columns of `choice`."""
        columns = np.arange(self.choice.shape[1]) if annotators is None else np.asarray(annotators)
        choice = self.choice[:, columns]
        weight = np.ones(len(columns)) if self.weights is None else self.weights[columns]
        classes = self.counts["classes"]
        out = np.zeros((len(choice), classes))
        rows, cols = np.nonzero(choice >= 0)
        np.add.at(out, (rows, choice[rows, cols]), weight[cols])
        return out

    def labels_per_item(self, labels: tuple[str, ...]) -> list[list[str]]:
        return [[labels[c] for c in row if c >= 0] for row in self.choice]


def normalise(sums: np.ndarray) -> np.ndarray:
    """Rows of weights → distributions; rows with no weight become NaN (undefined, never a silent zero)."""
    total = sums.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, sums / np.where(total > 0, total, 1), np.nan)


def pool(human_sums: np.ndarray, synthetic_sums: np.ndarray, synthetic_weight: float) -> np.ndarray:
    """The combined distribution: human and synthetic votes pooled, each synthetic vote weighing `synthetic_weight`."""
    return normalise(human_sums + synthetic_weight * synthetic_sums)


def read_human_votes(table: pd.DataFrame, labels: LabelSet, *, source: str | Path = "<table>") -> HumanVotes:
    """Per-rater votes from the table's `votes` column on `labels`.

    Each rater's weights are scaled to sum to 1 when they do not (counted); then votes for labels outside the set
    are dropped (counted per label) without rescaling what is left, so a rater who split their vote between
    anger and an off-set label adds ½ to anger. A MeltError names the row of malformed JSON or a bad weight; a
    table without any human vote is a MeltError too: ambiguity is defined by the human votes.
    """
    require_columns(table, ["id"], source=source, purpose="matching votes to utterances")
    check_ids(table, source=source)
    if VOTES not in table.columns:
        raise MeltError(
            f"no {VOTES!r} column: melt ambiguity needs per-rater human votes (e.g. from an IEMOCAP-layout "
            f"corpus); found {list(table.columns)}",
            file=source,
        )
    parsed = votes_of(table, source=source)
    known = list(labels.labels)
    position = {label: i for i, label in enumerate(known)}
    normalise_label = _cached_normalize(labels)
    items: list[int] = []
    raters: list[str] = []
    weights: list[np.ndarray] = []
    counts = Counter()
    off_set: Counter = Counter()
    for row, votes in enumerate(parsed):
        if not votes:
            counts["utterances_without_votes"] += 1
            continue
        kept_any = False
        for rater, shares in votes.items():
            total = sum(shares.values())
            if total <= 0:
                counts["raters_without_weight"] += 1
                continue
            if abs(total - 1) > WEIGHT_TOLERANCE:
                counts["raters_renormalised"] += 1
            vector = np.zeros(len(known))
            for label, share in shares.items():
                name = normalise_label(label) or "<empty>"
                if name in position:
                    vector[position[name]] += share / total
                else:
                    off_set[name] += 1
                    counts["votes_off_set"] += 1
                    counts["weight_off_set"] += share / total
            if vector.sum() <= 0:
                counts["raters_all_off_set"] += 1
                continue
            items.append(row)
            raters.append(str(rater))
            weights.append(vector)
            kept_any = True
        if not kept_any:
            counts["utterances_without_votes_in_set"] += 1
    if not items:
        raise MeltError(
            f"no human votes on the label set in any of the {len(table)} rows (column {VOTES!r}"
            + (f"; only labels outside the set: {dict(off_set.most_common(5))}" if off_set else "")
            + "): ambiguity needs human votes",
            file=source,
        )
    weight_off_set = counts.pop("weight_off_set", 0.0)
    item = np.asarray(items, dtype=np.int64)
    per_item = np.bincount(item, minlength=len(table))
    return HumanVotes(
        ids=table["id"].astype(str).to_numpy(),
        labels=tuple(known),
        item=item,
        rater=raters,
        weights=np.vstack(weights),
        counts={
            "utterances": len(table),
            "utterances_with_votes": int((per_item > 0).sum()),
            "utterances_without_votes": counts["utterances_without_votes"],
            "utterances_without_votes_in_set": counts["utterances_without_votes_in_set"],
            "utterances_with_one_rater": int((per_item == 1).sum()),
            "raters": len(raters),
            "raters_per_utterance": {
                str(k): int(v) for k, v in sorted(Counter(per_item[per_item > 0]).items())
            },
            "raters_renormalised": counts["raters_renormalised"],
            "raters_without_weight": counts["raters_without_weight"],
            "raters_all_off_set": counts["raters_all_off_set"],
            "votes_off_set": counts["votes_off_set"],
            "weight_off_set": round(float(weight_off_set), 6),
            "off_set_labels": dict(off_set.most_common()),
        },
    )


def _cached_normalize(labels: LabelSet) -> Callable[[object], str | None]:
    """`labels.normalize`, remembered per distinct text: a corpus repeats a handful of labels many times."""
    seen: dict[object, str | None] = {}

    def normalize(label: object) -> str | None:
        if label is None or label is pd.NA or _is_nan(label):
            return None
        if label not in seen:
            seen[label] = labels.normalize(label)
        return seen[label]

    return normalize


def _is_nan(value: object) -> bool:
    return isinstance(value, float) and math.isnan(value)


def read_panel_votes(path: str | Path, ids: np.ndarray, labels: LabelSet) -> PanelVotes:
    """Valid votes of an annotation panel, aligned with the corpus `ids`.

    `path` is a run folder holding votes.parquet or the file itself. Only rows with status "ok" and a label count;
    labels outside the set are dropped and counted, as are rows for ids that are not in the corpus. A file sharing
    no id with the corpus is a MeltError (most likely the panel of another corpus), as is a `weight` that is not
    a positive number or differs between two rows of one annotator."""
    path = Path(path)
    file = path / "votes.parquet" if path.is_dir() else path
    if path.is_dir() and not file.exists():
        raise MeltError("no votes.parquet in this folder (run melt annotate --panel first)", file=path)
    votes = read_any(file)
    missing = [c for c in PANEL_COLUMNS if c not in votes.columns]
    if missing:
        raise MeltError(f"missing column(s) {missing}; found {list(votes.columns)}", file=file)
    if votes.empty:
        raise MeltError("votes file has no rows", file=file)
    for column in ("id", "annotator"):
        if votes[column].isna().any():
            raise MeltError(
                f"empty {column}",
                file=file,
                row=int(votes[column].isna().to_numpy().argmax()) + 1,
                column=column,
            )
    vote_ids = votes["id"].astype(str).to_numpy()
    annotator_keys = votes["annotator"].astype(str).to_numpy()
    duplicated = pd.Series(list(zip(vote_ids, annotator_keys, strict=True))).duplicated()
    if duplicated.any():
        row = int(duplicated.to_numpy().argmax())
        raise MeltError(
            f"a second row for id {vote_ids[row]!r} and annotator {annotator_keys[row]}",
            file=file,
            row=row + 1,
        )
    status = votes["status"].astype("string").fillna("<missing>").to_numpy()
    normalise_label = _cached_normalize(labels)
    normalised = [normalise_label(v) for v in votes["label"]]
    position_of_label = {label: i for i, label in enumerate(labels.labels)}
    position_of_id = {key: i for i, key in enumerate(ids)}
    annotators = sorted(set(annotator_keys), key=_annotator_order)
    column_of = {a: j for j, a in enumerate(annotators)}
    choice = np.full((len(ids), len(annotators)), -1, dtype=np.int64)
    off_set: Counter = Counter()
    counts = Counter()
    unknown_ids: dict[str, None] = {}
    for vote_id, annotator, state, label in zip(vote_ids, annotator_keys, status, normalised, strict=True):
        item = position_of_id.get(vote_id)
        if item is None:
            unknown_ids[vote_id] = None
            counts["rows_for_ids_not_in_corpus"] += 1
            continue
        if state != "ok":
            continue
        if label is None:
            counts["ok_without_label"] += 1
        elif label not in position_of_label:
            off_set[label] += 1
            counts["votes_off_set"] += 1
        else:
            choice[item, column_of[annotator]] = position_of_label[label]
            counts["valid_votes"] += 1
    if len(unknown_ids) == len(set(vote_ids)):
        example = next(iter(unknown_ids))
        raise MeltError(
            f"none of the {len(unknown_ids)} ids in the votes is in the corpus (e.g. {example!r}): "
            "is this the panel of another corpus?",
            file=file,
        )
    in_panel = np.zeros(len(ids), dtype=bool)
    in_panel[[position_of_id[v] for v in set(vote_ids) if v in position_of_id]] = True
    valid_per_item = (choice >= 0).sum(axis=1)
    personas = _first_per_annotator(votes, annotator_keys, "persona")
    temperatures = {}
    if "temperature" in votes.columns:  # reported only; a value that is not a number is left out
        numeric = votes.assign(temperature=pd.to_numeric(votes["temperature"], errors="coerce"))
        temperatures = _first_per_annotator(numeric, annotator_keys, "temperature")
    weights = (
        _annotator_weights(votes, annotator_keys, annotators, file) if "weight" in votes.columns else None
    )
    return PanelVotes(
        annotators=annotators,
        choice=choice,
        personas={k: str(v) for k, v in personas.items()},
        temperatures={k: float(v) for k, v in temperatures.items()},
        weights=weights,
        counts={
            "weights": None if weights is None else dict(zip(annotators, weights.tolist(), strict=True)),
            "file": str(file),
            "rows": len(votes),
            "status": {str(k): int(v) for k, v in sorted(Counter(status).items())},
            "annotators": len(annotators),
            "classes": len(labels.labels),
            "valid_votes": counts["valid_votes"],
            "ok_without_label": counts["ok_without_label"],
            "votes_off_set": counts["votes_off_set"],
            "off_set_labels": dict(off_set.most_common()),
            "ids_not_in_corpus": len(unknown_ids),
            "ids_not_in_corpus_examples": list(unknown_ids)[:5],
            "rows_for_ids_not_in_corpus": counts["rows_for_ids_not_in_corpus"],
            "corpus_ids_not_in_panel": int((~in_panel).sum()),
            "utterances_without_valid_votes": int((in_panel & (valid_per_item == 0)).sum()),
            "valid_votes_per_utterance": {
                str(k): int(v) for k, v in sorted(Counter(valid_per_item[in_panel]).items())
            },
        },
    )


def _annotator_order(key: str) -> tuple[int, float, str]:
    try:
        return (0, float(key), key)
    except ValueError:
        return (1, 0.0, key)


def _first_per_annotator(votes: pd.DataFrame, keys: np.ndarray, column: str) -> dict[str, object]:
    if column not in votes.columns:
        return {}
    frame = pd.DataFrame({"annotator": keys, column: votes[column].to_numpy()}).dropna()
    return dict(frame.groupby("annotator", sort=False)[column].first())


def ambiguity(human_sums: np.ndarray, norm: Literal["present", "classes"] = "present") -> np.ndarray:
    """Normalised entropy of each utterance's human votes (see `metrics.normalised_entropy`); NaN without votes."""
    distributions = normalise(human_sums)
    defined = ~np.isnan(distributions).any(axis=1)
    out = np.full(len(human_sums), np.nan)
    if defined.any():
        out[defined] = normalised_entropy(distributions[defined], norm)
    return out


def tertiles(values: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """low / medium / high by rank of `values` (ties broken by id, so the cut is stable); None where NaN.

    Rank r (from 0) of the n defined values goes to tertile ⌊3r / n⌋, so the sizes differ by at most one."""
    out = np.full(len(values), None, dtype=object)
    defined = np.flatnonzero(~np.isnan(values))
    if not len(defined):
        return out
    # Rounded so that equal entropies reached through differently ordered float sums still tie.
    order = defined[np.lexsort((ids[defined].astype(str), np.round(values[defined], 12)))]
    rank = np.arange(len(order))
    out[order] = np.asarray(TERTILES, dtype=object)[(3 * rank) // len(order)]
    return out


def _annotator_weights(
    votes: pd.DataFrame, keys: np.ndarray, annotators: list[str], file: Path
) -> np.ndarray:
    """Each annotator's weight from the votes file's `weight` column: one positive number per annotator."""
    weight = pd.to_numeric(votes["weight"], errors="coerce").to_numpy(dtype=float)
    bad = ~(np.isfinite(weight) & (weight > 0))
    if bad.any():
        row = int(bad.argmax())
        raise MeltError(
            f"weight must be a positive number, got {votes['weight'].iloc[row]}",
            file=file,
            row=row + 1,
            column="weight",
        )
    of: dict[str, float] = {}
    for row, (key, value) in enumerate(zip(keys, weight, strict=True)):
        if of.setdefault(key, value) != value:
            raise MeltError(
                f"annotator {key} has two weights ({of[key]:g} and {value:g}): one annotator, one weight",
                file=file,
                row=row + 1,
                column="weight",
            )
    return np.array([of[a] for a in annotators])
