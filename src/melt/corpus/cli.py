"""`melt corpus ...`: build utterance tables."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

from melt.errors import MeltError
from melt.outputs import check_output_file

if TYPE_CHECKING:
    import pandas as pd

corpus_app = typer.Typer(
    help="Build utterance tables from MELD, MELT or any CSV/Parquet file.", no_args_is_help=True
)

OUT_HELP = "Output utterance table: .parquet or .csv."
SELECT_HELP = "Selection to apply: 'melt' (the MELT paper's rule) or a YAML file of selection settings."


def _finish(table: pd.DataFrame, out: Path, select: str | None) -> None:
    from melt.corpus.schema import write_table
    from melt.corpus.selection import SelectionConfig
    from melt.corpus.selection import select as apply_selection

    console = Console()
    if select:
        result = apply_selection(table, SelectionConfig.load(select).filters())
        steps = Table(title=f"selection: {select}")
        for column in ("filter", "before", "removed", "after"):
            steps.add_column(column, justify="left" if column == "filter" else "right")
        for row in result.steps.itertuples(index=False):
            steps.add_row(row.filter, str(row.before), str(row.removed), str(row.after))
        console.print(steps)
        if result.speakers:
            console.print(f"{len(result.speakers)} speakers kept: {', '.join(sorted(result.speakers))}")
        table = result.table
    per_split = table.groupby("split", dropna=False).agg(
        utterances=("id", "size"), speakers=("speaker", "nunique")
    )
    console.print(
        "rows per split: "
        + ", ".join(
            f"{split} {row.utterances} ({row.speakers} speakers)" for split, row in per_split.iterrows()
        )
    )
    from melt.corpus.labels import MELT_LABEL_SET

    for column in ("label", "llm_label"):
        if column in table.columns:
            off = MELT_LABEL_SET.off_label_counts(table[column])
            if off:
                listed = ", ".join(f"{label} {n}" for label, n in off.items())
                console.print(
                    f"[yellow]{column}: labels outside the label set, kept as they are:[/] {listed}"
                )
    write_table(table, out)
    console.print(f"wrote {len(table)} rows to {out}")


@corpus_app.command("meld")
def meld_command(
    folder: Path = typer.Argument(
        ..., help="Folder with MELD's train/dev/test_sent_emo.csv (or one such file)."
    ),
    out: Path = typer.Option(..., "--out", "-o", help=OUT_HELP),
    select: str | None = typer.Option(None, "--select", help=SELECT_HELP),
    splits: str = typer.Option(
        "train,dev,test", "--splits", help="Comma-separated splits to read from a folder."
    ),
) -> None:
    """MELD transcripts and human labels as an utterance table (ids like train/dia0_utt0)."""
    from melt.corpus.loaders import load_meld

    check_output_file(out)

    _finish(load_meld(folder, splits=tuple(s.strip() for s in splits.split(",") if s.strip())), out, select)


@corpus_app.command("melt")
def melt_command(
    csv: Path = typer.Argument(..., help="A published MELT CSV (meld_train.csv or meld_test.csv)."),
    out: Path = typer.Option(..., "--out", "-o", help=OUT_HELP),
    split: str | None = typer.Option(None, "--split", help="Split of the rows; default: from the file name."),
) -> None:
    """A published MELT file as an utterance table: MELD's label as `label`, GPT-4o's as `llm_label`."""
    from melt.corpus.loaders import load_melt_csv

    check_output_file(out)

    _finish(load_melt_csv(csv, split=split), out, None)


@corpus_app.command("import")
def import_command(
    path: Path = typer.Argument(..., help="Any CSV or Parquet file with one utterance per row."),
    out: Path = typer.Option(..., "--out", "-o", help=OUT_HELP),
    column: list[str] = typer.Option(
        [], "--column", "-c", help="Map a schema column to the file's column: text=transcript (repeatable)."
    ),
    split: str | None = typer.Option(None, "--split", help="Set the split of every row."),
    select: str | None = typer.Option(None, "--select", help=SELECT_HELP),
) -> None:
    """Any CSV/Parquet as an utterance table, renaming columns as mapped (see docs/corpus-schema.md)."""
    from melt.corpus.loaders import load_table

    check_output_file(out)

    mapping = {}
    for item in column:
        schema_column, sep, file_column = item.partition("=")
        if not sep or not schema_column or not file_column:
            raise MeltError(f"--column takes SCHEMA=FILE (e.g. text=transcript), got {item!r}")
        mapping[schema_column.strip()] = file_column.strip()
    _finish(load_table(path, mapping, split=split), out, select)
