"""The settings of `melt ambiguity`, loadable from YAML; the CLI's flags override the file's values."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from melt.corpus.labels import MELT_LABEL_SET, LabelSet
from melt.settings import load_settings


class AmbiguityConfig(BaseModel):
    """How distributions are built and scored (docs/ambiguity.md)."""

    model_config = ConfigDict(extra="forbid")

    labels: LabelSet = Field(default_factory=lambda: MELT_LABEL_SET.model_copy())
    synthetic_weight: float = Field(
        1.0, ge=0, description="weight of one synthetic vote against one human rater (the paper: 1)"
    )
    entropy_norm: Literal["present", "classes"] = Field(
        "present", description="present: log of the labels present (the paper's code); classes: log K"
    )
    seeds: list[int] = Field(
        default_factory=lambda: [0, 1, 2, 3, 4],
        min_length=1,
        description="one split-half repetition per seed; the first also seeds the saturation draws",
    )
    saturation_draws: int = Field(5, ge=1, description="random sub-panels per panel size")
    ece_bins: int = Field(10, ge=1, description="equal-width confidence bins of ECE")

    @field_validator("labels", mode="before")
    @classmethod
    def _labels_as_a_list(cls, value: Any) -> Any:
        return LabelSet.from_setting(value)

    @classmethod
    def load(cls, path: str | Path | None = None, **overrides: Any) -> AmbiguityConfig:
        """The YAML file's settings (or the defaults), with `overrides` that are not None on top."""
        return load_settings(cls, path, what="ambiguity settings", **overrides)

    def public(self) -> dict[str, Any]:
        """The settings as summary.json records them."""
        data = self.model_dump(mode="json")
        data["labels"] = list(self.labels.labels)
        return data
