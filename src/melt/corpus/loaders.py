"""Loaders that turn corpus files into utterance tables (see `melt.corpus.schema`)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from melt.corpus.labels import MELT_LABEL_SET, LabelSet
from melt.corpus.schema import conform, read_any, utterance_id
from melt.errors import MeltError

MELD_SPLITS: tuple[str, ...] = ("train", "dev", "test")
MELD_COLUMNS: tuple[str, ...] = (
    "Utterance",
    "Speaker",
    "Emotion",
    "Dialogue_ID",
    "Utterance_ID",
    "Season",
    "Episode",
    "StartTime",
    "EndTime",
)
MELT_COLUMNS: tuple[str, ...] = (*MELD_COLUMNS, "llm_label")

# MELD writes times like SRT (`0:16:04,777`); some rows drop the zero padding of the milliseconds (`47,28` means
# 47.028 s), so the field after the comma is read as a whole number of milliseconds.
_TIME = re.compile(r"^\s*(\d+):(\d{1,2}):(\d{1,2})[,.](\d{1,3})\s*$")


def parse_time(value: str) -> float:
    """Seconds from `h:mm:ss,mmm`; raises ValueError for anything else."""
    match = _TIME.match(value)
    if not match:
        raise ValueError(f"cannot parse time {value!r}; expected h:mm:ss,mmm")
    hours, minutes, seconds, millis = (int(g) for g in match.groups())
    if minutes >= 60 or seconds >= 60:
        raise ValueError(f"cannot parse time {value!r}: minutes and seconds must be below 60")
    return hours * 3600 + minutes * 60 + seconds + millis / 1000


def _times(raw: pd.DataFrame, column: str, source: Path) -> pd.Series:
    out = []
    for position, value in enumerate(raw[column]):
        try:
            out.append(parse_time(str(value)) if not pd.isna(value) else float("nan"))
        except ValueError as exc:
            raise MeltError(str(exc), file=source, row=position + 1, column=column) from exc
    return pd.Series(out, index=raw.index, dtype="Float64")


def _seconds(raw: pd.DataFrame, column: str, source: Path) -> pd.Series:
    """Seconds from numbers or `h:mm:ss,mmm` times, whichever each value is."""
    out = []
    for position, value in enumerate(raw[column]):
        if pd.isna(value) or str(value).strip() == "":
            out.append(float("nan"))
            continue
        text = str(value).strip()
        try:
            out.append(parse_time(text) if ":" in text else float(text))
        except ValueError as exc:
            raise MeltError(
                f"expected seconds or h:mm:ss,mmm, found {value!r}",
                file=source,
                row=position + 1,
                column=column,
            ) from exc
    return pd.Series(out, index=raw.index, dtype="Float64")


def _check_mapping(columns: Mapping[str, str], file_columns: list[str], source: Path) -> None:
    """A mapping must not leave two columns with one name: renaming onto a column the file already has, or one
    file column onto two schema columns, would make pandas hold duplicate columns."""
    used: dict[str, str] = {}
    for schema_col, file_col in columns.items():
        if file_col in used:
            raise MeltError(
                f"--column maps file column {file_col!r} twice ({used[file_col]}= and {schema_col}=)",
                file=source,
            )
        used[file_col] = schema_col
    for schema_col, file_col in columns.items():
        if schema_col != file_col and schema_col in file_columns and schema_col not in columns.values():
            raise MeltError(
                f"cannot map {file_col!r} onto {schema_col!r}: the file already has a column {schema_col!r} "
                f"(map that one to another name too, e.g. --column original_{schema_col}={schema_col})",
                file=source,
            )


def _integers(raw: pd.DataFrame, column: str, source: Path) -> pd.Series:
    numbers = pd.to_numeric(raw[column], errors="coerce")
    bad = numbers.isna() | (numbers != numbers.round())
    if bad.any():
        position = int(bad.to_numpy().argmax())
        raise MeltError(
            f"expected a whole number, found {raw[column].iloc[position]!r}",
            file=source,
            row=position + 1,
            column=column,
        )
    return numbers.astype("Int64")


def _require(raw: pd.DataFrame, columns: tuple[str, ...], source: Path) -> None:
    missing = [c for c in columns if c not in raw.columns]
    if missing:
        raise MeltError(f"missing column(s) {missing}; found {list(raw.columns)}", file=source)


def _check_text(raw: pd.DataFrame, column: str, source: Path) -> None:
    empty = raw[column].isna() | (raw[column].astype(str).str.strip() == "")
    if empty.any():
        raise MeltError("empty value", file=source, row=int(empty.to_numpy().argmax()) + 1, column=column)


def _meld_like(raw: pd.DataFrame, split: str, source: Path, labels: LabelSet) -> pd.DataFrame:
    """The columns MELD and the published MELT files share, as schema columns."""
    _check_text(raw, "Utterance", source)
    _check_text(raw, "Speaker", source)
    dialogue = _integers(raw, "Dialogue_ID", source)
    utterance = _integers(raw, "Utterance_ID", source)
    start = _times(raw, "StartTime", source)
    end = _times(raw, "EndTime", source)
    table = pd.DataFrame(
        {
            "id": [utterance_id(split, d, u) for d, u in zip(dialogue, utterance, strict=True)],
            "split": split,
            "speaker": raw["Speaker"].str.strip(),
            "text": raw["Utterance"],
            "dialogue_id": dialogue,
            "utterance_id": utterance,
            "season": _integers(raw, "Season", source),
            "episode": _integers(raw, "Episode", source),
            "start": start,
            "end": end,
            "duration": end - start,
            "duration_source": "timestamps",
            "label": labels.normalize_series(raw["Emotion"]),
        }
    )
    if "Sentiment" in raw.columns:
        table["sentiment"] = raw["Sentiment"].str.strip().str.lower()
    return table


def load_meld(
    path: str | Path, splits: tuple[str, ...] = MELD_SPLITS, labels: LabelSet = MELT_LABEL_SET
) -> pd.DataFrame:
    """MELD's `{split}_sent_emo.csv` files from a folder (or one such file) as one utterance table."""
    path = Path(path)
    if path.is_file():
        match = re.match(r"(train|dev|test)_sent_emo", path.stem)
        files = {match.group(1) if match else path.stem: path}
    else:
        if not path.exists():
            raise MeltError(
                "file not found (expected a folder with MELD's CSV files, or one of them)", file=path
            )
        files = {split: path / f"{split}_sent_emo.csv" for split in splits}
    tables = []
    for split, file in files.items():
        raw = read_any(file)
        _require(raw, MELD_COLUMNS, file)
        table = _meld_like(raw, split, file, labels)
        table["meld_sr_no"] = raw.get("Sr No.")
        tables.append(conform(table, source=file))
    return conform(pd.concat(tables, ignore_index=True), source=path)


def split_from_name(path: str | Path) -> str | None:
    match = re.search(r"(?:^|[_\-.])(train|dev|test)(?:[_\-.]|$)", Path(path).stem)
    return match.group(1) if match else None


def load_melt_csv(
    path: str | Path, split: str | None = None, labels: LabelSet = MELT_LABEL_SET
) -> pd.DataFrame:
    """A published MELT CSV: MELD's human label becomes `label`, GPT-4o's becomes `llm_label`.

    Speakers stay lower-cased and the text stays as MELT normalised it; join to MELD on ids, never on text."""
    path = Path(path)
    split = split or split_from_name(path)
    if split is None:
        raise MeltError("cannot tell the split from the file name; pass --split train|dev|test", file=path)
    raw = read_any(path)
    _require(raw, MELT_COLUMNS, path)
    table = _meld_like(raw, split, path, labels)
    table["llm_label"] = labels.normalize_series(raw["llm_label"])
    if "filename" in raw.columns:
        table["filename"] = raw["filename"]
    return conform(table, source=path)


def load_table(
    path: str | Path,
    columns: Mapping[str, str] | None = None,
    split: str | None = None,
    labels: LabelSet = MELT_LABEL_SET,
) -> pd.DataFrame:
    """Any CSV or Parquet file as an utterance table.

    `columns` maps schema columns to the file's own names (`{"text": "transcript", "label": "emotion"}`); columns
    not named keep their names. Without an `id` column, ids are `<split or file stem>/<row number>`. Labels in
    `label` are normalised with `labels`; values outside the set are kept (and reported by `melt compare`).
    """
    path = Path(path)
    raw = read_any(path)
    columns = dict(columns or {})
    missing = [file_col for file_col in columns.values() if file_col not in raw.columns]
    if missing:
        raise MeltError(f"mapped column(s) {missing} not in the file; found {list(raw.columns)}", file=path)
    _check_mapping(columns, list(raw.columns), path)
    table = raw.rename(columns={file_col: schema_col for schema_col, file_col in columns.items()})
    if "id" not in table.columns:
        prefix = split or path.stem
        table.insert(0, "id", [f"{prefix}/{i}" for i in range(len(table))])
    if split is not None:
        table["split"] = split
    for column in ("start", "end"):
        if column in table.columns:
            table[column] = _seconds(table, column, path)
    if "duration" not in table.columns and {"start", "end"} <= set(table.columns):
        table["duration"] = table["end"] - table["start"]
        table["duration_source"] = "timestamps"
    if "label" in table.columns:
        table["label"] = labels.normalize_series(table["label"])
    if "text" in table.columns:
        _check_text(table, "text", path)
    return conform(table, source=path)
