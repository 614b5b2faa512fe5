"""Settings of the review and preference commands: pydantic models read from YAML, flags on top."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from melt.errors import MeltError

Settings = TypeVar("Settings", bound=BaseModel)


def load_settings(model: type[Settings], path: str | Path | None = None, **overrides: Any) -> Settings:
    """`model` from the YAML file at `path` (or the defaults), with the `overrides` that are not None on top."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise MeltError("config file not found", file=path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise MeltError(f"not valid YAML ({exc})", file=path) from exc
        if not isinstance(data, dict):
            raise MeltError("expected a mapping of settings", file=path)
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors()
        )
        raise MeltError(f"invalid settings: {problems}", file=path) from exc
