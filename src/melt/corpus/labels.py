"""Label sets and label normalisation.

A label outside the set is never dropped or coerced: `normalize` returns it lower-cased and stripped, and
`LabelSet.is_known` tells whether it belongs to the set, so reports can flag it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

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
    "neutral state": "neutral",
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

    @classmethod
    def from_setting(cls, value: Any) -> Any:
        """A settings field's value (pydantic "before" validator): a bare list of labels, the common case in YAML
        and in Python alike, as a label set; anything else as it is, for the model to validate."""
        return cls.from_labels(value) if isinstance(value, list | tuple) else value


MELT_LABEL_SET = LabelSet()


#: Labels the corpora use outside MELT's seven. They are kept under these lower-case names, never coerced.
OFF_SET_LABELS: tuple[str, ...] = ("calm", "contempt", "frustration", "no_agreement", "other")

#: Every corpus's own labels -> the label melt writes: one of MELT's seven, or an off-set label. The corpus's
#: label itself is kept in `label_original`. docs/corpus-schema.md prints this table (a test keeps them equal).
CORPUS_LABELS: dict[str, dict[str, str]] = {
    # EmoEvaluation's label (4-class convention: neu, hap+exc, sad, ang).
    "iemocap": {
        "neu": "neutral",
        "hap": "joy",
        "exc": "joy",
        "sad": "sadness",
        "ang": "anger",
        "fru": "frustration",
        "sur": "surprise",
        "fea": "fear",
        "dis": "disgust",
        "oth": "other",
        "xxx": "no_agreement",
    },
    # The last part of the file name, `OAF_back_ps.wav`.
    "tess": {
        "angry": "anger",
        "disgust": "disgust",
        "fear": "fear",
        "happy": "joy",
        "neutral": "neutral",
        "ps": "surprise",
        "sad": "sadness",
    },
    # The names RAVDESS documents for its emotion codes 01-08 (the loader reads the code).
    "ravdess": {
        "neutral": "neutral",
        "calm": "calm",
        "happy": "joy",
        "sad": "sadness",
        "angry": "anger",
        "fearful": "fear",
        "disgust": "disgust",
        "surprised": "surprise",
    },
    # File names carry ANG...; raters' answers (`respEmo` of finishedResponses.csv) carry one letter.
    "cremad": {
        "ANG": "anger",
        "DIS": "disgust",
        "FEA": "fear",
        "HAP": "joy",
        "NEU": "neutral",
        "SAD": "sadness",
        "A": "anger",
        "D": "disgust",
        "F": "fear",
        "H": "joy",
        "N": "neutral",
        "S": "sadness",
    },
    # EmoClass of labels_consensus.csv.
    "msppodcast": {
        "A": "anger",
        "S": "sadness",
        "H": "joy",
        "U": "surprise",
        "F": "fear",
        "D": "disgust",
        "C": "contempt",
        "N": "neutral",
        "O": "other",
        "X": "no_agreement",
    },
}


def corpus_label(corpus: str, original: str) -> tuple[str, str] | None:
    """(the corpus's label as its table spells it, melt's label), or None for a label the corpus does not have.

    Case is ignored where the table has one spelling per label (TESS file names come as `OAF_back_Angry.wav` too).
    """
    table = CORPUS_LABELS[corpus]
    text = str(original).strip()
    if text in table:
        return text, table[text]
    folded = {key.lower(): key for key in table}
    key = folded.get(text.lower())
    if key is None or sum(k.lower() == text.lower() for k in table) > 1:
        return None
    return key, table[key]


def rater_label(text: str, labels: LabelSet = MELT_LABEL_SET) -> str | None:
    """One rater's free-text label: normalised with `labels`; "Other" with any free text after it
    (IEMOCAP `Other:...`, MSP-Podcast `Other-...`) is `other`."""
    cleaned = _clean(text)
    if re.match(r"other\b", cleaned):
        return "other"
    return labels.normalize(cleaned)
