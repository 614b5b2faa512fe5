"""Agreement and classification metrics on label sequences, written here so their definitions are explicit.

All functions take two equally long sequences of labels (strings). `labels` fixes the class order and which
classes count; by default it is the sorted union of both sequences.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

# Fleiss' κ is defined once, below every stage (annotation panels use it too); named here with the other metrics.
from melt.agreement import fleiss_kappa as fleiss_kappa


def _classes(reference: Sequence[str], candidate: Sequence[str], labels: Sequence[str] | None) -> list[str]:
    if len(reference) != len(candidate):
        raise ValueError(f"sequences differ in length: {len(reference)} vs {len(candidate)}")
    return list(labels) if labels is not None else sorted(set(reference) | set(candidate))


def confusion_matrix(
    reference: Sequence[str], candidate: Sequence[str], labels: Sequence[str] | None = None
) -> pd.DataFrame:
    """Counts with reference labels as rows and candidate labels as columns; pairs outside `labels` are left out."""
    classes = _classes(reference, candidate, labels)
    position = {label: i for i, label in enumerate(classes)}
    counts = np.zeros((len(classes), len(classes)), dtype=np.int64)
    for ref, cand in zip(reference, candidate, strict=True):
        if ref in position and cand in position:
            counts[position[ref], position[cand]] += 1
    return pd.DataFrame(
        counts, index=pd.Index(classes, name="reference"), columns=pd.Index(classes, name="candidate")
    )


def accuracy(reference: Sequence[str], candidate: Sequence[str]) -> float:
    if not len(reference):
        return float("nan")
    return float(np.mean([r == c for r, c in zip(reference, candidate, strict=True)]))


def recall_per_class(reference, candidate, labels=None) -> pd.Series:
    matrix = confusion_matrix(reference, candidate, labels).to_numpy()
    support = matrix.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.diag(matrix) / support
    return pd.Series(recall, index=_classes(reference, candidate, labels))


def unweighted_average_recall(reference, candidate, labels=None) -> float:
    """UAR: mean recall over the classes that occur in the reference."""
    recall = recall_per_class(reference, candidate, labels)
    return float(recall.dropna().mean()) if recall.notna().any() else float("nan")


def macro_f1(reference, candidate, labels=None) -> float:
    """Mean F1 over the classes present in the reference or the candidate (a class absent from both is skipped)."""
    matrix = confusion_matrix(reference, candidate, labels).to_numpy().astype(float)
    true_positive = np.diag(matrix)
    predicted = matrix.sum(axis=0)
    actual = matrix.sum(axis=1)
    present = (predicted + actual) > 0
    if not present.any():
        return float("nan")
    f1 = 2 * true_positive[present] / (predicted[present] + actual[present])
    return float(f1.mean())


def cohen_kappa(
    reference: Sequence[str], candidate: Sequence[str], labels: Sequence[str] | None = None
) -> float:
    """Cohen's κ = (p_o − p_e) / (1 − p_e) from the confusion matrix. Undefined (NaN) without pairs, and when
    both sources use one and the same label throughout (p_e = 1: there is no chance agreement to beat)."""
    matrix = confusion_matrix(reference, candidate, labels).to_numpy().astype(float)
    total = matrix.sum()
    if total == 0:
        return float("nan")
    observed = np.trace(matrix) / total
    expected = float((matrix.sum(axis=0) * matrix.sum(axis=1)).sum()) / total**2
    return float("nan") if expected == 1 else float((observed - expected) / (1 - expected))


def krippendorff_alpha_nominal(ratings: Sequence[Sequence[str | None]]) -> float:
    """Krippendorff's α for nominal data. `ratings[u]` lists the labels unit u received (None = missing).

    Units with fewer than two ratings carry no pairing information and are ignored, as in the definition.
    α = 1 − D_o / D_e from the coincidence matrix. Undefined (NaN) when every rating is the same value (D_e = 0),
    as in Krippendorff's definition: data without variation say nothing about reliability.
    """
    values = sorted({v for unit in ratings for v in unit if v is not None})
    if not values:
        return float("nan")
    position = {v: i for i, v in enumerate(values)}
    coincidence = np.zeros((len(values), len(values)))
    for unit in ratings:
        present = [position[v] for v in unit if v is not None]
        m = len(present)
        if m < 2:
            continue
        counts = np.bincount(present, minlength=len(values)).astype(float)
        coincidence += (np.outer(counts, counts) - np.diag(counts)) / (m - 1)
    n = coincidence.sum()
    if n == 0:
        return float("nan")
    marginals = coincidence.sum(axis=0)
    observed_disagreement = n - np.trace(coincidence)
    expected_disagreement = (n**2 - (marginals**2).sum()) / (n - 1)
    if expected_disagreement == 0:
        return float("nan")
    return float(1 - observed_disagreement / expected_disagreement)


def pair_statistics(confusion: np.ndarray) -> dict[str, np.ndarray]:
    """Agreement of two label sources from their confusion matrix (reference rows, candidate columns), for one
    K × K matrix or a stack of them (… × K × K, e.g. bootstrap resamples): the same definitions as
    `cohen_kappa`, `krippendorff_alpha_nominal` (two ratings per unit, none missing), `accuracy`,
    `unweighted_average_recall` and `macro_f1` above, computed on whole arrays at once.

    Returns arrays of the leading shape: n, accuracy, change_rate, cohen_kappa, krippendorff_alpha, uar, macro_f1;
    NaN where a statistic is undefined (no pairs; one label throughout for κ and α)."""
    counts = np.asarray(confusion, dtype=float)
    n = counts.sum(axis=(-2, -1))
    agreed = np.trace(counts, axis1=-2, axis2=-1)
    reference = counts.sum(axis=-1)  # per class: how often the reference uses it
    candidate = counts.sum(axis=-2)
    diagonal = np.diagonal(counts, axis1=-2, axis2=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = agreed / n
        expected = (reference * candidate).sum(axis=-1) / n**2
        kappa = np.where(expected < 1, (accuracy - expected) / (1 - expected), np.nan)
        # Two ratings per unit: the coincidence matrix is C + Cᵀ over 2n pairable values.
        values = 2 * n
        marginals = reference + candidate
        spread = values**2 - (marginals**2).sum(axis=-1)
        alpha = np.where(spread > 0, 1 - (values - 1) * (values - 2 * agreed) / spread, np.nan)
        recall = np.where(reference > 0, diagonal / reference, np.nan)
        uar = _mean_present(recall, reference > 0)
        used = (reference + candidate) > 0
        f1 = np.where(used, 2 * diagonal / (reference + candidate), np.nan)
        macro = _mean_present(f1, used)
    return {
        "n": n,
        "accuracy": accuracy,
        "change_rate": 1 - accuracy,
        "cohen_kappa": kappa,
        "krippendorff_alpha": alpha,
        "uar": uar,
        "macro_f1": macro,
    }


def _mean_present(values: np.ndarray, present: np.ndarray) -> np.ndarray:
    counted = present.sum(axis=-1)
    total = np.where(present, values, 0.0).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counted > 0, total / counted, np.nan)


def per_class_scores(confusion: pd.DataFrame) -> pd.DataFrame:
    """Per class of a confusion matrix (reference rows, candidate columns), the reference taken as the truth:
    how often each source uses it, how often they agree on it, precision, recall and F1 (NaN where undefined:
    precision of a class the candidate never uses, recall of one the reference never uses)."""
    counts = confusion.to_numpy().astype(float)
    reference = counts.sum(axis=1)
    candidate = counts.sum(axis=0)
    agreed = np.diag(counts)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(candidate > 0, agreed / candidate, np.nan)
        recall = np.where(reference > 0, agreed / reference, np.nan)
        f1 = np.where(reference + candidate > 0, 2 * agreed / (reference + candidate), np.nan)
    return pd.DataFrame(
        {
            "reference": reference.astype(int),
            "candidate": candidate.astype(int),
            "agreed": agreed.astype(int),
            "precision": precision,
            "recall": recall,
            "f1": f1,
        },
        index=confusion.index,
    )


def classification_scores(reference, candidate, labels=None) -> dict[str, float]:
    """UAR, ACC and macro-F1 together, as the papers report them."""
    return {
        "uar": unweighted_average_recall(reference, candidate, labels),
        "acc": accuracy(reference, candidate),
        "f1": macro_f1(reference, candidate, labels),
    }
