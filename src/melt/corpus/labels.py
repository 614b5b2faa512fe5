"""Label sets and label normalisation.

A label outside the set is never dropped or coerced: `normalize` returns it lower-cased and stripped, and
`LabelSet.is_known` tells whether it belongs to the set, so reports can flag it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import pandas as pd
from pydantic import BaseModel, Field, model_validator

MELT_LABELS: tuple[str, ...] = ("anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise")

MELT_SYNONYMS: dict[str, str] = {
    "angry": "anger",
    "anger": "anger",
    "mad": "anger",
    "annoyed": "anger",
    "annoyance": "anger",
    "rage": "anger",
    "furious": "anger",
    "ang": "anger",
    "disgusted": "disgust",
    "disgust": "disgust",
    "dis": "disgust",
    "fear": "fear",
    "fearful": "fear",
    "scared": "fear",
    "afraid": "fear",
    "fea": "fear",
    "happy": "joy",
    "happiness": "joy",
    "joy": "joy",
    "joyful": "joy",
    "excited": "joy",
    "excitement": "joy",
    "hap": "joy",
    "exc": "joy",
    "neutral": "neutral",
    "neutrality": "neutral",
    "neu": "neutral",
    "sad": "sadness",
    "sadness": "sadness",
    "sorrow": "sadness",
    "unhappy": "sadness",
    "surprise": "surprise",
    "surprised": "surprise",
    "pleasant surprise": "surprise",
    "pleasant_surprise": "surprise",
    "ps": "surprise",
    "sur": "surprise",
}


def _clean(label: str) -> str:
    return re.sub(r"\s+", " ", label.strip().strip(".!\"'").lower())


class LabelSet(BaseModel):
    """A closed set of labels with synonyms that map onto them."""

    labels: tuple[str, ...] = MELT_LABELS
    synonyms: dict[str, str] = Field(default_factory=lambda: dict(MELT_SYNONYMS))

    @model_validator(mode="after")
    def _check(self) -> LabelSet:
        self.labels = tuple(_clean(label) for label in self.labels)
        if len(self.labels) < 2 or "" in self.labels:
            raise ValueError(f"a label set needs at least two non-empty labels, got {list(self.labels)}")
        repeated = sorted({label for label in self.labels if self.labels.count(label) > 1})
        if repeated:
            raise ValueError(f"labels repeat (once lower-cased and stripped): {repeated}")
        self.synonyms = {_clean(k): _clean(v) for k, v in self.synonyms.items()}
        unknown_targets = sorted({v for v in self.synonyms.values() if v not in self.labels})
        if unknown_targets:
            raise ValueError(f"synonyms map onto labels outside the set: {unknown_targets}")
        return self

    def normalize(self, label: object) -> str | None:
        """The canonical label, or the cleaned text when it is outside the set; None for a missing value."""
        if label is None or (isinstance(label, float) and pd.isna(label)) or label is pd.NA:
            return None
        text = _clean(str(label))
        if not text:
            return None
        if text in self.labels:
            return text
        return self.synonyms.get(text, text)

    def is_known(self, label: str | None) -> bool:
        return label is not None and label in self.labels

    def normalize_series(self, values: Iterable[object]) -> pd.Series:
        index = values.index if isinstance(values, pd.Series) else None
        return pd.Series([self.normalize(v) for v in values], index=index, dtype="string")

    def off_label_counts(self, values: Iterable[str | None]) -> dict[str, int]:
        """Counts of labels outside the set (missing values are not counted)."""
        counts: dict[str, int] = {}
        for value in values:
            if value is not None and not pd.isna(value) and value not in self.labels:
                counts[value] = counts.get(value, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

    @classmethod
    def from_labels(cls, labels: Iterable[str], synonyms: Mapping[str, str] | None = None) -> LabelSet:
        """A label set of `labels`; the default synonyms are kept where they map onto one of them."""
        cleaned = tuple(_clean(label) for label in labels)
        merged = {k: v for k, v in MELT_SYNONYMS.items() if v in cleaned}
        merged.update(synonyms or {})
        return cls(labels=cleaned, synonyms=merged)


MELT_LABEL_SET = LabelSet()
