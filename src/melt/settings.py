"""Settings of every command: a pydantic model read from a YAML file, with flags on top."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from melt.errors import MeltError

Settings = TypeVar("Settings", bound=BaseModel)


def load_settings(
    model: type[Settings],
    path: str | Path | None = None,
    /,
    *,
    under: dict[str, Any] | None = None,
    what: str = "settings",
    **overrides: Any,
) -> Settings:
    """`model` from the YAML file at `path` (or the defaults) over `under` (e.g. the settings a run recorded),
    with the `overrides` that are not None on top. A missing or unreadable file, or a setting the model refuses,
    is one `MeltError` naming the file (`what` names the settings in it). `model` and `path` are positional only,
    so that a setting may be called `model` or `path`."""
    data: dict[str, Any] = dict(under or {})
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise MeltError("config file not found", file=path)
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise MeltError(f"not valid YAML ({exc})", file=path) from exc
        if not isinstance(loaded, dict):
            raise MeltError("expected a mapping of settings", file=path)
        data.update(loaded)
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in exc.errors())
        raise MeltError(f"invalid {what}: {problems}", file=path) from exc


__all__ = ["load_settings"]
