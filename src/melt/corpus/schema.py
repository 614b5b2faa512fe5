"""The utterance table: one row per utterance, the data every stage of `melt` reads and writes.

See `docs/corpus-schema.md` for the full description. Columns beyond the ones below are kept untouched, so a
table can carry further label sources (e.g. `llm_label`) and metadata.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
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
    # What the emotional speech corpora add (docs/corpus-schema.md, "Emotional speech corpora").
    "label_original": "string",
    "votes": "string",
    "valence": "Float64",
    "arousal": "Float64",
    "dominance": "Float64",
    "intensity": "string",
    "gender": "string",
    "fold": "Int64",
    "corpus": "string",
}
REQUIRED: tuple[str, ...] = ("id", "text")
#: Per-rater votes: a JSON object {rater: {label: weight}} per row, kept as text so CSV and Parquet hold the
#: same thing. Each rater's weights sum to 1: a rater who lists n labels gives each 1/n.
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
    _check_durations(out, source=source)
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


def _check_durations(table: pd.DataFrame, *, source: str | Path) -> None:
    """A negative or infinite duration is a broken timestamp or header, never a real length: reject it."""
    values = table["duration"].to_numpy(dtype=float, na_value=math.nan)
    bad = (values < 0) | np.isinf(values)
    if bad.any():
        position = int(bad.argmax())
        value = values[position]
        why = "is negative (end before start?)" if value < 0 else "is not a finite number"
        raise MeltError(f"duration {value} {why}", file=source, row=position + 1, column="duration")


def rater_votes(raters: Mapping[str, Sequence[str]]) -> dict[str, dict[str, float]]:
    """{rater: [label, ...]} -> {rater: {label: weight}}: each rater weighs one, split evenly over the labels
    they listed; labels listed twice (e.g. two synonyms of one label) add up. Raters without labels are left out."""
    votes: dict[str, dict[str, float]] = {}
    for rater, labels in raters.items():
        if not labels:
            continue
        weights: dict[str, float] = {}
        for label in labels:
            weights[label] = weights.get(label, 0.0) + 1 / len(labels)
        votes[str(rater)] = weights
    return votes


def votes_json(votes: Mapping[str, Mapping[str, float]]) -> str | None:
    """The `votes` cell of one row (None when no rater voted)."""
    return json.dumps(votes, ensure_ascii=False) if votes else None


def votes_of(table: pd.DataFrame, *, source: str | Path = "<table>") -> list[dict[str, dict[str, float]]]:
    """Per-rater votes of each row as {rater: {label: weight}} ({} where there are none).

    The older form {rater: label} is read as weight 1 for that label."""
    if VOTES not in table.columns:
        return [{} for _ in range(len(table))]
    out = []
    for position, cell in enumerate(table[VOTES]):
        if cell is None or cell is pd.NA or (isinstance(cell, float) and math.isnan(cell)) or cell == "":
            out.append({})
            continue
        if not isinstance(cell, str):
            raise MeltError(
                f"votes must be JSON text, got {type(cell).__name__}",
                file=source,
                row=position + 1,
                column=VOTES,
            )
        try:
            out.append(_parse_votes(json.loads(cell)))
        except (ValueError, TypeError) as exc:
            raise MeltError(
                f"votes must be JSON {{rater: {{label: weight}}}} ({exc})",
                file=source,
                row=position + 1,
                column=VOTES,
            ) from exc
    return out


def _parse_votes(raw: object) -> dict[str, dict[str, float]]:
    if raw is None:  # JSON null: no votes, like {}
        return {}
    if not isinstance(raw, dict):
        raise TypeError(f"expected an object, found {type(raw).__name__}")
    votes: dict[str, dict[str, float]] = {}
    for rater, value in raw.items():
        if isinstance(value, str):
            votes[str(rater)] = {value: 1.0}
            continue
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise TypeError(f"rater {rater!r}: expected a label or {{label: weight}}, found {value!r}")
        weights = {}
        for label, weight in value.items():
            # A weight of 0 is kept (a rater who gave nothing); readers count such raters.
            if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 <= weight < math.inf:
                raise ValueError(
                    f"rater {rater!r}: weight of {label!r} must be a finite number >= 0, found {weight!r}"
                )
            weights[str(label)] = float(weight)
        votes[str(rater)] = weights
    return votes


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


def read_any(
    path: str | Path, *, dtype: dict[str, str] | None = None, allow_no_rows: bool = False
) -> pd.DataFrame:
    """Read a CSV or Parquet file with clear errors for a missing, empty, binary or non-UTF-8 file (and for a
    header without rows, unless `allow_no_rows`)."""
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
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise MeltError(
            f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at line {line}); re-save the file as UTF-8",
            file=path,
            row=max(line - 1, 0) or None,
        ) from exc
    _check_first_row(text, path)
    try:
        table = pd.read_csv(
            path, dtype=dtype or str, keep_default_na=False, na_values=[""], encoding="utf-8-sig"
        )
    except pd.errors.EmptyDataError as exc:
        raise MeltError("file has no header or rows", file=path) from exc
    except pd.errors.ParserError as exc:
        raise MeltError(f"malformed CSV ({exc})", file=path) from exc
    if table.empty and not allow_no_rows:
        raise MeltError("file has a header but no rows", file=path)
    return table


def _check_first_row(text: str, path: Path) -> None:
    """pandas reads a first row with more fields than the header as if the extra leading fields were an index,
    silently shifting every column; later rows like that already fail to parse. Refuse it instead."""
    # The head suffices: a cut-off row can only look shorter than it is, never longer.
    rows = (row for row in csv.reader(io.StringIO(text[:1_000_000])) if row)
    try:
        header = next(rows, None)
        first = next(rows, None)
    except csv.Error:
        return  # pandas gives its own message for what the csv module cannot read
    if header is not None and first is not None and len(first) > len(header):
        raise MeltError(
            f"{len(first)} fields but the header has {len(header)}; quote values that contain commas",
            file=path,
            row=1,
        )


def read_table(path: str | Path) -> pd.DataFrame:
    """Read an utterance table written by `write_table` (or any file with at least `id` and `text`)."""
    return conform(read_any(path), source=path)


def require_columns(table: pd.DataFrame, columns: Sequence[str], *, source: str | Path, purpose: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise MeltError(
            f"missing column(s) {missing} needed for {purpose}; found {list(table.columns)}", file=source
        )
