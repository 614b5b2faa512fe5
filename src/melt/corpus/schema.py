"""The utterance table: one row per utterance, the data every stage of `melt` reads and writes.

See `docs/corpus-schema.md` for the full description. Columns beyond the ones below are kept untouched, so a
table can carry further label sources (e.g. `llm_label`) and metadata.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from melt.errors import MeltError

#: column -> pandas dtype of every utterance table, in order.
COLUMNS: dict[str, str] = {
    "id": "string",
    "split": "string",
    "speaker": "string",
    "text": "string",
    "dialogue_id": "Int64",
    "utterance_id": "Int64",
    "season": "Int64",
    "episode": "Int64",
    "start": "Float64",
    "end": "Float64",
    "duration": "Float64",
    "duration_source": "string",
    "audio": "string",
    "label": "string",
}
REQUIRED: tuple[str, ...] = ("id", "text")
#: Per-rater votes: a JSON object {rater: label} per row, kept as text so CSV and Parquet hold the same thing.
VOTES = "votes"


def utterance_id(split: str, dialogue_id: int, utterance_id: int) -> str:
    """MELD's keys repeat across splits, so ids are qualified by split: `train/dia0_utt0`."""
    return f"{split}/dia{int(dialogue_id)}_utt{int(utterance_id)}"


def conform(table: pd.DataFrame, *, source: str | Path = "<table>") -> pd.DataFrame:
    """Add missing optional columns, cast known ones, check ids; return a new table with schema columns first."""
    missing = [c for c in REQUIRED if c not in table.columns]
    if missing:
        raise MeltError(f"missing required column(s) {missing}; found {list(table.columns)}", file=source)
    out = table.copy()
    for column, dtype in COLUMNS.items():
        if column not in out.columns:
            out[column] = pd.Series(pd.NA, index=out.index, dtype=dtype)
        else:
            try:
                out[column] = out[column].astype(dtype)
            except (TypeError, ValueError) as exc:
                bad = _first_uncastable(out[column], dtype)
                raise MeltError(
                    f"value {out[column].iloc[bad]!r} is not of type {dtype}",
                    file=source,
                    row=bad + 1,
                    column=column,
                ) from exc
    check_ids(out, source=source)
    extra = [c for c in out.columns if c not in COLUMNS]
    return out[list(COLUMNS) + extra].reset_index(drop=True)


def _first_uncastable(series: pd.Series, dtype: str) -> int:
    for position, value in enumerate(series):
        try:
            pd.Series([value]).astype(dtype)
        except (TypeError, ValueError):
            return position
    return 0


def check_ids(table: pd.DataFrame, *, source: str | Path = "<table>") -> None:
    ids = table["id"]
    if ids.isna().any():
        raise MeltError("empty id", file=source, row=int(ids.isna().to_numpy().argmax()) + 1, column="id")
    duplicated = ids.duplicated(keep="first")
    if duplicated.any():
        position = int(duplicated.to_numpy().argmax())
        first = int((ids == ids.iloc[position]).to_numpy().argmax())
        raise MeltError(
            f"duplicate id {ids.iloc[position]!r} (first seen at row {first + 1})",
            file=source,
            row=position + 1,
            column="id",
        )


def votes_of(table: pd.DataFrame) -> list[dict[str, str]]:
    """Per-rater votes of each row ({} where there are none)."""
    if VOTES not in table.columns:
        return [{} for _ in range(len(table))]
    return [json.loads(v) if isinstance(v, str) and v else {} for v in table[VOTES]]


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Write through a temporary file in the same folder, then rename, so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        # mkstemp creates the file 0600; give it the mode a plain open() would have.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_table(table: pd.DataFrame, path: str | Path) -> Path:
    """Write a table as Parquet (`.parquet`) or CSV (`.csv`), atomically."""
    path = Path(path)
    if path.suffix == ".parquet":
        return atomic_write(path, lambda tmp: table.to_parquet(tmp, index=False))
    if path.suffix != ".csv":
        raise MeltError("an output table must end in .parquet or .csv", file=path)
    return atomic_write(path, lambda tmp: table.to_csv(tmp, index=False))


def read_any(path: str | Path, *, dtype: dict[str, str] | None = None) -> pd.DataFrame:
    """Read a CSV or Parquet file with clear errors for a missing, empty, binary or non-UTF-8 file."""
    path = Path(path)
    if not path.exists():
        raise MeltError("file not found", file=path)
    if path.is_dir():
        raise MeltError("is a folder, expected a CSV or Parquet file", file=path)
    if path.stat().st_size == 0:
        raise MeltError("file is empty", file=path)
    if path.suffix == ".parquet":
        try:
            return pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises several unrelated types for a bad file
            raise MeltError(f"not a readable Parquet file ({exc})", file=path) from exc
    raw = path.read_bytes()
    try:
        raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise MeltError(
            f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at line {line}); re-save the file as UTF-8",
            file=path,
            row=max(line - 1, 0) or None,
        ) from exc
    try:
        table = pd.read_csv(
            path, dtype=dtype or str, keep_default_na=False, na_values=[""], encoding="utf-8-sig"
        )
    except pd.errors.EmptyDataError as exc:
        raise MeltError("file has no header or rows", file=path) from exc
    except pd.errors.ParserError as exc:
        raise MeltError(f"malformed CSV ({exc})", file=path) from exc
    if table.empty:
        raise MeltError("file has a header but no rows", file=path)
    return table


def read_table(path: str | Path) -> pd.DataFrame:
    """Read an utterance table written by `write_table` (or any file with at least `id` and `text`)."""
    return conform(read_any(path), source=path)


def require_columns(table: pd.DataFrame, columns: Sequence[str], *, source: str | Path, purpose: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise MeltError(
            f"missing column(s) {missing} needed for {purpose}; found {list(table.columns)}", file=source
        )
