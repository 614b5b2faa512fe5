"""Row selection: small filters that each say how many rows they removed, composed in order.

The `melt` preset is the rule measured on the published MELT data (SPEC §1): utterances of at least 1 s and
3 words, by speakers with at least 10 such utterances in MELD's training split, minus names that are not
characters. It yields exactly the 42 published speakers on MELD train.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field

from melt.errors import MeltError

NON_CHARACTER_NAMES: tuple[str, ...] = ("all", "guy", "the casting director", "the interviewer")


def word_count(text: pd.Series) -> pd.Series:
    return text.fillna("").astype(str).str.split().str.len()


@dataclass(frozen=True)
class MinDuration:
    """Keep utterances at least `seconds` long. `duration` holds the audio length once audio was measured
    (`duration_source == "audio"`), else the timestamps' span; rows with no duration are removed."""

    seconds: float = 1.0

    @property
    def name(self) -> str:
        return f"duration >= {self.seconds:g} s"

    def keep(self, table: pd.DataFrame) -> pd.Series:
        return (table["duration"] >= self.seconds).fillna(False).astype(bool)


@dataclass(frozen=True)
class MinWords:
    """Keep utterances with at least `words` whitespace-separated words."""

    words: int = 3

    @property
    def name(self) -> str:
        return f"words >= {self.words}"

    def keep(self, table: pd.DataFrame) -> pd.Series:
        return word_count(table["text"]) >= self.words


@dataclass(frozen=True)
class NamedSpeakers:
    """Keep utterances of speakers with at least `min_utterances` rows in `reference_split` (counted on the rows
    that reach this filter) whose name is not in `stop_list`. Names compare case-insensitively, so the set found
    on MELD also selects in the published MELT files, whose speakers are lower-cased."""

    min_utterances: int = 10
    reference_split: str = "train"
    stop_list: tuple[str, ...] = NON_CHARACTER_NAMES

    @property
    def name(self) -> str:
        return f"speakers with >= {self.min_utterances} {self.reference_split} utterances, minus stop-list"

    def speakers(self, table: pd.DataFrame) -> set[str]:
        names = table["speaker"].str.strip().str.lower()
        counts = names[table["split"] == self.reference_split].value_counts()
        stop = {s.lower() for s in self.stop_list}
        return {name for name, n in counts.items() if n >= self.min_utterances and name not in stop}

    def keep(self, table: pd.DataFrame) -> pd.Series:
        if not (table["split"] == self.reference_split).any():
            raise MeltError(
                f"the speaker filter counts utterances in split {self.reference_split!r}, which the table lacks; "
                f"splits present: {sorted(table['split'].dropna().unique())}"
            )
        return table["speaker"].str.strip().str.lower().isin(self.speakers(table)).fillna(False).astype(bool)


Filter = MinDuration | MinWords | NamedSpeakers


@dataclass
class SelectionResult:
    table: pd.DataFrame
    #: one row per filter: filter, before, removed, after
    steps: pd.DataFrame
    speakers: set[str] = field(default_factory=set)


def select(table: pd.DataFrame, filters: list[Filter]) -> SelectionResult:
    """Apply `filters` in order; each sees only the rows the ones before it kept."""
    steps = []
    speakers: set[str] = set()
    current = table
    for flt in filters:
        kept = flt.keep(current)
        if isinstance(flt, NamedSpeakers):
            speakers = flt.speakers(current)
        steps.append(
            {
                "filter": flt.name,
                "before": len(current),
                "removed": int((~kept).sum()),
                "after": int(kept.sum()),
            }
        )
        current = current[kept.to_numpy()]
    return SelectionResult(current.reset_index(drop=True), pd.DataFrame(steps), speakers)


class SelectionConfig(BaseModel):
    """Selection settings, loadable from YAML; a field set to null switches its filter off."""

    model_config = ConfigDict(extra="forbid")

    min_duration: float | None = 1.0
    min_words: int | None = 3
    min_speaker_utterances: int | None = 10
    speaker_reference_split: str = "train"
    speaker_stop_list: list[str] = Field(default_factory=lambda: list(NON_CHARACTER_NAMES))

    @classmethod
    def load(cls, name_or_path: str) -> SelectionConfig:
        """`melt` (the MELT paper's rule) or a YAML file of these fields."""
        if name_or_path == "melt":
            return cls()
        path = Path(name_or_path)
        if not path.exists():
            raise MeltError(
                "unknown selection: neither the preset 'melt' nor an existing YAML file", file=path
            )
        try:
            return cls.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")) or {})
        except (yaml.YAMLError, ValueError) as exc:
            raise MeltError(f"invalid selection config: {exc}", file=path) from exc

    def filters(self) -> list[Filter]:
        filters: list[Filter] = []
        if self.min_duration is not None:
            filters.append(MinDuration(self.min_duration))
        if self.min_words is not None:
            filters.append(MinWords(self.min_words))
        if self.min_speaker_utterances is not None:
            filters.append(
                NamedSpeakers(
                    self.min_speaker_utterances, self.speaker_reference_split, tuple(self.speaker_stop_list)
                )
            )
        return filters
