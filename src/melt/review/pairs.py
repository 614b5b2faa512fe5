"""`melt preference pairs`: the items of a blind A/B preference test (the MELT paper's MOS experiment, §4.1).

An item is one utterance with its media file (audio or video), transcript, and two descriptions of it: source
A (e.g. the LLM's label) and source B (e.g. the human label). Which description is shown first is decided on
our side and balanced:

* every item gets a base order `a_first` drawn so that within each group (emotion label) half the items show A
  first (a seeded shuffle, then alternating);
* participant number k (0, 1, 2, ... in order of first login) sees item i with A first when
  `a_first[i] XOR (k is odd)`: across participants each item alternates, within a participant half the items
  of each group show A first;
* participant k sees the items in the order of a permutation drawn from `numpy.random.default_rng([seed, k])`.

The server stores each participant's number, order and sides in its SQLite file when the participant first logs
in, and every answer records the side A was on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from melt.corpus.schema import read_any, require_columns, write_table
from melt.errors import MeltError

PAIR_COLUMNS: dict[str, str] = {
    "item": "Int64",
    "id": "string",
    "media": "string",
    "media_sha256": "string",
    "text": "string",
    "group": "string",
    "description_a": "string",
    "description_b": "string",
    "source_a": "string",
    "source_b": "string",
    "a_first": "boolean",
    "seed": "Int64",
}
#: Media the page can play, by suffix.
MEDIA_TYPES: dict[str, str] = {
    ".wav": "audio/wav",
    ".mp3": "audio/mpeg",
    ".ogg": "audio/ogg",
    ".oga": "audio/ogg",
    ".opus": "audio/ogg",
    ".flac": "audio/flac",
    ".m4a": "audio/mp4",
    ".mp4": "video/mp4",
    ".webm": "video/webm",
    ".ogv": "video/ogg",
    ".mov": "video/quicktime",
}


class PairsSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    a: str = Field(..., description="column of description A (e.g. llm_label)")
    b: str = Field(..., description="column of description B (e.g. label, the human label)")
    group: str | None = Field(None, description="column the report groups by (default: the B column)")
    media: str = Field("audio", description="column of the audio or video file")
    only_different: bool = Field(False, description="keep only items whose two descriptions differ")
    per_label: int | None = Field(None, ge=1, description="at most N items per group, drawn with the seed")
    seed: int = Field(
        0, ge=0, description="seed of the per-label draw, the base A/B order and the item orders"
    )


def _canonical(value: object) -> str:
    return " ".join(str(value).split()).casefold()


def identical_items(pairs: pd.DataFrame) -> int:
    """Items whose two descriptions are the same (as `--only-different` compares them)."""
    return sum(
        _canonical(a) == _canonical(b)
        for a, b in zip(pairs["description_a"], pairs["description_b"], strict=True)
    )


def build_pairs(
    table: pd.DataFrame, settings: PairsSettings, *, source: str | Path = "<table>"
) -> pd.DataFrame:
    """The pairs table (columns `PAIR_COLUMNS`). Media paths are resolved against `source`'s folder when it is a
    file; every media file must exist and be of a playable type."""
    from melt.acoustics.features import file_sha256

    group = settings.group or settings.b
    if settings.a == settings.b:
        raise MeltError(f"--a and --b name the same column {settings.a!r}", file=source)
    require_columns(
        table,
        list(dict.fromkeys(["id", settings.a, settings.b, group, settings.media])),
        source=source,
        purpose="the preference test",
    )
    base = Path(source).parent if Path(str(source)).is_file() else Path(".")
    frame = table.reset_index(drop=True)
    described = [
        pd.notna(x) and pd.notna(y) and pd.notna(m) and bool(str(x).strip()) and bool(str(y).strip())
        for x, y, m in zip(frame[settings.a], frame[settings.b], frame[settings.media], strict=True)
    ]
    keep = pd.Series(described, index=frame.index, dtype=bool)
    if settings.only_different:
        keep &= pd.Series(
            [
                _canonical(x) != _canonical(y)
                for x, y in zip(frame[settings.a], frame[settings.b], strict=True)
            ],
            index=frame.index,
            dtype=bool,
        )
    frame = frame[keep]
    if frame.empty:
        raise MeltError(
            "no row has both descriptions and a media file"
            + (" with different descriptions (--only-different)" if settings.only_different else ""),
            file=source,
        )
    frame = frame.assign(_group=frame[group].astype("string").fillna("(none)").str.strip())
    rng = np.random.default_rng(settings.seed)
    if settings.per_label:
        chosen = []
        for _, part in frame.groupby("_group", sort=True):
            take = min(settings.per_label, len(part))
            chosen += sorted(rng.choice(part.index.to_numpy(), size=take, replace=False).tolist())
        frame = frame.loc[sorted(chosen)]
    frame = frame.reset_index(drop=True)

    a_first = np.zeros(len(frame), dtype=bool)
    for _, part in frame.groupby("_group", sort=True):
        shuffled = rng.permutation(part.index.to_numpy())
        start = bool(rng.integers(2))
        a_first[shuffled] = [(i % 2 == 0) == start for i in range(len(shuffled))]

    media, hashes = [], []
    for position, value in zip(frame.index, frame[settings.media], strict=True):
        path = Path(str(value))
        path = (path if path.is_absolute() else base / path).absolute()
        if path.suffix.lower() not in MEDIA_TYPES:
            raise MeltError(
                f"{path.name}: not a playable media type; use one of {', '.join(MEDIA_TYPES)}",
                file=source,
                row=position + 1,
                column=settings.media,
            )
        if not path.is_file():
            raise MeltError(
                f"media file not found: {path}", file=source, row=position + 1, column=settings.media
            )
        media.append(str(path))
        hashes.append(file_sha256(path))
    text = frame["text"] if "text" in frame.columns else pd.Series(pd.NA, index=frame.index)
    pairs = pd.DataFrame(
        {
            "item": range(len(frame)),
            "id": frame["id"].astype(str),
            "media": media,
            "media_sha256": hashes,
            "text": text,
            "group": frame["_group"],
            "description_a": frame[settings.a].astype(str).str.strip(),
            "description_b": frame[settings.b].astype(str).str.strip(),
            "source_a": settings.a,
            "source_b": settings.b,
            "a_first": a_first,
            "seed": settings.seed,
        }
    )
    if pairs["id"].duplicated().any():
        dup = pairs.loc[pairs["id"].duplicated(), "id"].iloc[0]
        raise MeltError(f"duplicate id {dup!r}", file=source, column="id")
    return pairs.astype(PAIR_COLUMNS)


def write_pairs(table_path: str | Path, out: str | Path, settings: PairsSettings) -> pd.DataFrame:
    """The pairs table at `out`, and `<name>.json` next to it: melt version, date, the input table and its
    sha256, the settings and the items per group."""
    from datetime import UTC, datetime

    from melt import __version__
    from melt.acoustics.features import file_sha256
    from melt.review.export import write_json

    table = read_any(table_path)
    pairs = build_pairs(table, settings, source=table_path)
    out = Path(out)
    write_table(pairs, out)
    write_json(
        out.with_suffix(".json"),
        {
            "melt_version": __version__,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "table": str(Path(table_path).absolute()),
            "table_sha256": file_sha256(table_path),
            "rows_in_table": len(table),
            "items": len(pairs),
            "settings": settings.model_dump(mode="json"),
            "per_group": {str(k): int(v) for k, v in pairs["group"].value_counts().sort_index().items()},
            "order": "a_first balanced per group; participant k: a_first XOR (k odd); item order "
            "numpy.random.default_rng([seed, k]).permutation(n)",
        },
    )
    return pairs


def read_pairs(path: str | Path) -> pd.DataFrame:
    """A pairs table written by `write_pairs`, checked."""
    pairs = read_any(path)
    require_columns(pairs, list(PAIR_COLUMNS), source=path, purpose="the preference test")
    pairs = pairs[list(PAIR_COLUMNS)].copy()
    if not pd.api.types.is_bool_dtype(pairs["a_first"]):  # CSV: text
        flags = pairs["a_first"].astype(str).str.strip().str.lower()
        if not flags.isin(["true", "false"]).all():
            bad = int((~flags.isin(["true", "false"])).to_numpy().argmax())
            raise MeltError("expected True or False", file=path, row=bad + 1, column="a_first")
        pairs["a_first"] = flags.eq("true")
    try:
        pairs = pairs.astype(PAIR_COLUMNS)
    except (TypeError, ValueError) as exc:
        raise MeltError(f"not a pairs table written by `melt preference pairs` ({exc})", file=path) from exc
    if list(pairs["item"]) != list(range(len(pairs))):
        raise MeltError("column item must number the rows 0, 1, 2, ...", file=path, column="item")
    if pairs.empty:
        raise MeltError("the pairs table has no item", file=path)
    return pairs


def participant_plan(pairs: pd.DataFrame, number: int) -> list[tuple[int, bool]]:
    """(item, A shown first) in the order participant `number` (0-based, by first login) sees them."""
    seed = int(pairs["seed"].iloc[0])
    order = np.random.default_rng([seed, number]).permutation(len(pairs))
    flip = number % 2 == 1
    a_first = pairs["a_first"].to_numpy(dtype=bool)
    return [(int(i), bool(a_first[i]) != flip) for i in order]
