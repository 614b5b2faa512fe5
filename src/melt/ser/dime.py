"""DiME-Aug (Scaling Ambiguity): distribution-aware multimodal augmentation of the rare emotions, training part only.

Training rows are grouped by the argmax of their target distribution (ties to the label that comes first). With
n_max the size of the largest group and r the ratio (0.30 by default), class c receives
max(0, ⌊r · n_max⌋ − n_c) new rows. Each new row mixes a random row i of the class with one of the k = 3 rows of the
same class nearest to i (Euclidean distance on standardised audio + text features), with α ~ U(0, 1):

- audio (1 − α)·x_i + α·x_j over the first L samples, L the shorter parent's length;
- transcript of i if α < 0.5, else of j;
- distribution (1 − α)·P_i + α·P_j, renormalised.

The audio + text features (`neighbour_features`): the 88 openSMILE eGeMAPSv02 functionals (kept in an `egemaps`
feature cache, by file content) and 10 lexical features of the transcript
(`LEXICAL_FEATURES`). The paper used 72 librosa statistics (MFCC, chroma, spectral contrast, ...) and 10 lexical
features; eGeMAPS is the acoustic set melt already computes.

A class with a single row has no neighbour to mix with and one with no row nothing to mix: they get no new rows,
and the result says so (`counts`). Everything random comes from one seed, so a seed gives the same rows, audio
and distributions. The new rows are written as `dime.parquet` (ids, parents, α, text, the distribution) and
their audio as 16 kHz WAV files, so they can be listened to; their SSL features go through the feature cache
like any other audio.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from melt.acoustics.audio import SAMPLE_RATE, AudioError, read_audio, write_wav
from melt.ambiguity.metrics import argmax
from melt.corpus.schema import write_table
from melt.errors import MeltError

if TYPE_CHECKING:
    from melt.ser.cache import FeatureCache

#: The paper's ratio of the majority class that every class is brought up to, and its neighbours per row.
RATIO = 0.30
NEIGHBOURS = 3
TABLE = "dime.parquet"
LEXICAL_FEATURES: tuple[str, ...] = (
    "words",
    "characters",
    "mean_word_length",
    "syllables_per_word",
    "question_marks",
    "exclamation_marks",
    "other_punctuation",
    "distinct_word_share",
    "negations",
    "first_person",
)
_WORD = re.compile(r"[A-Za-z']+")
_NEGATIONS = {"no", "not", "never", "nothing", "nobody", "none", "nor", "cannot"}
_FIRST_PERSON = {"i", "me", "my", "mine", "myself", "we", "us", "our", "ours", "i'm", "i've", "i'll", "i'd"}


class DimeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ratio: float = Field(RATIO, ge=0, le=1, description="every class is brought up to ⌊ratio · n_max⌋ rows")
    neighbours: int = Field(
        NEIGHBOURS, ge=1, description="nearest rows of the same class a partner is drawn from"
    )
    seed: int = 0


@dataclass
class DimeResult:
    #: id, audio, duration, text, label (the class), parent_a, parent_b, alpha, then p_<label> per label
    rows: pd.DataFrame
    #: [new rows, labels]: the mixed distributions
    distributions: np.ndarray
    #: label, rows (before), goal ⌊r·n_max⌋, added, note
    counts: pd.DataFrame


def lexical_features(texts: pd.Series) -> np.ndarray:
    """The 10 `LEXICAL_FEATURES` per transcript (a missing transcript gives zeros)."""
    from melt.acoustics.features import count_syllables

    out = np.zeros((len(texts), len(LEXICAL_FEATURES)))
    for row, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            continue
        words = [w.lower() for w in _WORD.findall(text)]
        n = len(words)
        out[row] = [
            n,
            len(text),
            np.mean([len(w) for w in words]) if n else 0.0,
            count_syllables(text) / n if n else 0.0,
            text.count("?"),
            text.count("!"),
            sum(text.count(c) for c in ",;:-"),
            len(set(words)) / n if n else 0.0,
            sum(w in _NEGATIONS or w.endswith("n't") for w in words),
            sum(w in _FIRST_PERSON for w in words),
        ]
    return out


def neighbour_features(table: pd.DataFrame, cache: FeatureCache, *, root: str | Path = ".") -> np.ndarray:
    """Audio + text features of each row [rows, 88 + 10]: the eGeMAPSv02 functionals (from `cache`, an `egemaps`
    feature cache, computed where missing; NaN where the audio is unusable) and `lexical_features` of `text`."""
    from melt.ser.cache import extract_features, lookup

    extract_features(table, cache.backbone(), cache, root=root, progress=False)
    found = lookup(cache, table, root=root)
    audio = np.full((len(table), cache.dim), np.nan)
    audio[found.present] = found.whole[:, 0, :]
    texts = table["text"] if "text" in table.columns else pd.Series([None] * len(table))
    return np.hstack([audio, lexical_features(texts.reset_index(drop=True))])


def standardise(features: np.ndarray) -> np.ndarray:
    """Columns to zero mean and unit variance (constant columns left at 0); NaN to the column's mean (0)."""
    values = np.asarray(features, dtype=np.float64)
    mean = np.nanmean(np.where(np.isfinite(values), values, np.nan), axis=0)
    mean = np.where(np.isfinite(mean), mean, 0.0)
    centred = np.where(np.isfinite(values), values - mean, 0.0)
    std = centred.std(axis=0)
    return centred / np.where(std > 1e-12, std, 1.0)


def targets_per_class(
    classes: np.ndarray, num_labels: int, ratio: float
) -> tuple[np.ndarray, np.ndarray, int]:
    """(rows per class, new rows per class max(0, ⌊ratio · n_max⌋ − n_c), ⌊ratio · n_max⌋)."""
    counts = np.bincount(classes, minlength=num_labels)
    # ⌊r·n⌋ of the decimal ratio: 0.29 × 100 is 28.999999999999996 in floating point
    target = math.floor(ratio * int(counts.max()) + 1e-9) if len(classes) else 0
    return counts, np.maximum(0, target - counts), target


def nearest_in_class(features: np.ndarray, members: np.ndarray, k: int) -> dict[int, np.ndarray]:
    """For each member row, its min(k, n − 1) nearest other members (Euclidean; ties by row order)."""
    points = features[members]
    distances = np.sqrt(((points[:, None, :] - points[None, :, :]) ** 2).sum(axis=2))
    np.fill_diagonal(distances, np.inf)
    order = np.argsort(distances, axis=1, kind="stable")[:, : min(k, len(members) - 1)]
    return {int(row): members[order[i]] for i, row in enumerate(members)}


def dime_augment(
    table: pd.DataFrame,
    distributions: np.ndarray,
    features: np.ndarray,
    labels: list[str],
    out_dir: str | Path,
    *,
    root: str | Path = ".",
    settings: DimeSettings | None = None,
) -> DimeResult:
    """New training rows for the classes below ⌊ratio · n_max⌋ (module docstring), from `table`'s rows (the
    training part only: id, audio, text), their target `distributions` [rows, labels] and their neighbour
    `features` [rows, F] (raw: standardised here). Writes `out_dir/dime.parquet` and `out_dir/audio/*.wav`."""
    settings = settings or DimeSettings()
    table = table.reset_index(drop=True)
    values = np.asarray(distributions, dtype=np.float64)
    if values.shape != (len(table), len(labels)):
        raise ValueError(
            f"distributions {values.shape} do not match {len(table)} rows × {len(labels)} labels"
        )
    out = Path(out_dir)
    classes = argmax(values) if len(values) else np.zeros(0, dtype=np.int64)
    counts, needed, target = targets_per_class(classes, len(labels), settings.ratio)
    scaled = standardise(features)
    rng = np.random.default_rng(settings.seed)
    base = Path(root)
    signals: dict[int, np.ndarray] = {}

    def signal(row: int) -> np.ndarray:
        if row not in signals:
            path = Path(str(table["audio"].iloc[row]))
            signals[row] = read_audio(path if path.is_absolute() else base / path)
        return signals[row]

    texts = table["text"] if "text" in table.columns else pd.Series([None] * len(table), dtype="string")
    rows, mixed, notes = [], [], []
    for c, label in enumerate(labels):
        members = np.flatnonzero(classes == c)
        note = ""
        if needed[c] and len(members) < 2:
            note = "no row to mix" if not len(members) else "a single row: no neighbour to mix with"
            notes.append((label, int(counts[c]), target, 0, note))
            continue
        neighbours = nearest_in_class(scaled, members, settings.neighbours) if needed[c] else {}
        for number in range(int(needed[c])):
            i = int(rng.choice(members))
            j = int(rng.choice(neighbours[i]))
            alpha = float(rng.uniform(0.0, 1.0))
            try:
                x_i, x_j = signal(i), signal(j)
            except AudioError as exc:
                raise MeltError(
                    f"DiME-Aug cannot read a parent's audio ({exc.reason})", file=exc.file
                ) from exc
            length = min(len(x_i), len(x_j))
            audio = (1 - alpha) * x_i[:length] + alpha * x_j[:length]
            distribution = (1 - alpha) * values[i] + alpha * values[j]
            distribution = distribution / distribution.sum()
            name = f"dime_{label}_{number:05d}"
            path = out / "audio" / f"{name}.wav"
            try:
                write_wav(path, audio.astype(np.float32))
            except OSError as exc:
                raise MeltError(f"cannot write augmented audio ({exc.strerror or exc})", file=path) from exc
            rows.append(
                {
                    "id": f"dime/{label}/{number:05d}",
                    "audio": str(path.resolve()),
                    "duration": length / SAMPLE_RATE,
                    "text": texts.iloc[i] if alpha < 0.5 else texts.iloc[j],
                    "label": label,
                    "parent_a": str(table["id"].iloc[i]),
                    "parent_b": str(table["id"].iloc[j]),
                    "alpha": alpha,
                }
            )
            mixed.append(distribution)
        notes.append((label, int(counts[c]), target, int(needed[c]), note))
    frame = pd.DataFrame(
        rows, columns=["id", "audio", "duration", "text", "label", "parent_a", "parent_b", "alpha"]
    )
    for column in ("id", "audio", "text", "label", "parent_a", "parent_b"):
        frame[column] = frame[column].astype("string")
    mixed_values = np.vstack(mixed) if mixed else np.zeros((0, len(labels)))
    for k, label in enumerate(labels):
        frame[f"p_{label}"] = mixed_values[:, k]
    try:
        write_table(frame, out / TABLE)
        # audio of an earlier run into the same folder that this run did not write would look like part of it
        written = {Path(p).name for p in frame["audio"]}
        for stale in (out / "audio").glob("dime_*.wav"):
            if stale.name not in written:
                stale.unlink()
    except OSError as exc:
        raise MeltError(f"cannot write the augmented rows ({exc.strerror or exc})", file=out / TABLE) from exc
    counts_table = pd.DataFrame(notes, columns=["label", "rows", "goal", "added", "note"])
    return DimeResult(rows=frame, distributions=mixed_values, counts=counts_table)
