"""The settings of `melt ambiguity`, loadable from YAML; the CLI's flags override the file's values."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from melt.corpus.labels import MELT_LABEL_SET, LabelSet
from melt.errors import MeltError


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

    @classmethod
    def load(cls, path: str | Path | None = None, **overrides: Any) -> AmbiguityConfig:
        """The YAML file's settings (or the defaults), with `overrides` that are not None on top."""
        data: dict[str, Any] = {}
        if path is not None:
            path = Path(path)
            if not path.is_file():
                raise MeltError("config file not found", file=path)
            try:
                data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            except yaml.YAMLError as exc:
                raise MeltError(f"not valid YAML ({exc})", file=path) from exc
            if not isinstance(data, dict):
                raise MeltError("expected a mapping of settings", file=path)
        data.update({k: v for k, v in overrides.items() if v is not None})
        try:
            if isinstance(data.get("labels"), list | tuple):  # a bare list of labels is the common case
                data["labels"] = LabelSet.from_labels(data["labels"])
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in exc.errors()
            )
            raise MeltError(f"invalid ambiguity settings: {problems}", file=path) from exc

    def public(self) -> dict[str, Any]:
        """The settings as summary.json records them."""
        data = self.model_dump(mode="json")
        data["labels"] = list(self.labels.labels)
        return data
