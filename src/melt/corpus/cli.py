"""`melt corpus ...`: build utterance tables."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

from melt.errors import MeltError
from melt.outputs import check_output_file, check_output_folder

if TYPE_CHECKING:
    import pandas as pd

corpus_app = typer.Typer(
    help=(
        "Build utterance tables from MELD, MELT, emotional speech corpora (IEMOCAP, TESS, RAVDESS, CREMA-D, "
        "MSP-Podcast) or any CSV/Parquet file; make speaker-independent folds; describe a table."
    ),
    no_args_is_help=True,
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
    part = "split" if table["split"].notna().any() or table["fold"].isna().all() else "fold"
    per_part = table.groupby(part, dropna=False).agg(
        utterances=("id", "size"), speakers=("speaker", "nunique")
    )
    console.print(
        f"rows per {part}: "
        + ", ".join(f"{name} {row.utterances} ({row.speakers} speakers)" for name, row in per_part.iterrows())
    )
    if table["duration_source"].eq("audio").any():
        hours = table["duration"].sum() / 3600
        console.print(f"audio: {int(table['audio'].notna().sum())} files, {hours:.2f} hours")
    for note in table.attrs.get("melt", {}).get("notes", []):
        console.print(f"[yellow]note:[/] {note}")
    if "audio_problem" in table.columns and table["audio_problem"].notna().any():
        problems = table["audio_problem"].dropna()
        console.print(
            f"[yellow]{len(problems)} utterance(s) without usable audio[/] (kept, `audio` empty, reason in "
            "`audio_problem`):"
        )
        for reason, count in problems.str.split(": ", n=1).str[0].value_counts().items():
            console.print(f"  {count} × {reason}")
        for problem in problems.head(5):
            console.print(f"  {problem}")
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


ROOT_HELP = "The corpus's root folder, in its official layout (see docs/corpus-schema.md)."


@corpus_app.command("iemocap")
def iemocap_command(
    root: Path = typer.Argument(..., help="IEMOCAP's release folder, the one holding Session1..Session5."),
    out: Path = typer.Option(..., "--out", "-o", help=OUT_HELP),
    classes: str = typer.Option(
        "4", "--classes", help="4: neu, hap+exc (joy), sad, ang (the field's 5,531); all: every label."
    ),
) -> None:
    """IEMOCAP: labels, the evaluators' votes (1/n each for a rater listing n labels; the actors'
    self-evaluations apart in self_votes), V/A/D, transcripts, audio; speaker = session + gender; fold = session
    (leave one session out)."""
    from melt.corpus.emotion_corpora import load_iemocap

    check_output_file(out)

    _finish(load_iemocap(root, classes=classes, progress=True), out, None)


@corpus_app.command("tess")
def tess_command(
    root: Path = typer.Argument(..., help=ROOT_HELP + " Files like OAF_back_angry.wav in any sub-folder."),
    out: Path = typer.Option(..., "--out", "-o", help=OUT_HELP),
) -> None:
    """TESS: 2,800 clips of two speakers (OAF, YAF), 7 emotions; ps (pleasant surprise) -> surprise."""
    from melt.corpus.emotion_corpora import load_tess

    check_output_file(out)

    _finish(load_tess(root, progress=True), out, None)


@corpus_app.command("ravdess")
def ravdess_command(
    root: Path = typer.Argument(
        ..., help=ROOT_HELP + " Files like 03-01-05-01-02-01-12.wav in any sub-folder."
    ),
    out: Path = typer.Option(..., "--out", "-o", help=OUT_HELP),
    keep_calm: bool = typer.Option(False, "--keep-calm", help="Keep calm (02) as its own label 'calm'."),
) -> None:
    """RAVDESS audio-only speech (03-01-*): 1,440 clips, 1,248 without calm; speaker = actor."""
    from melt.corpus.emotion_corpora import load_ravdess

    check_output_file(out)

    _finish(load_ravdess(root, keep_calm=keep_calm, progress=True), out, None)


@corpus_app.command("cremad")
def cremad_command(
    root: Path = typer.Argument(..., help=ROOT_HELP + " Clips like AudioWAV/1001_DFA_ANG_XX.wav."),
    out: Path = typer.Option(..., "--out", "-o", help=OUT_HELP),
    votes: Path | None = typer.Option(
        None, "--votes", help="CREMA-D's finishedResponses.csv: per-rater responses become `votes`."
    ),
    vote_channel: str = typer.Option(
        "voice", "--vote-channel", help="Responses to count: voice, face, audiovisual or all (queryType)."
    ),
) -> None:
    """CREMA-D: 7,442 clips, 6 emotions; the level (LO/MD/HI/XX) as `intensity`; gender from
    VideoDemographics.csv when it is in ROOT."""
    from melt.corpus.emotion_corpora import load_cremad

    check_output_file(out)

    _finish(load_cremad(root, votes=votes, vote_channel=vote_channel, progress=True), out, None)


@corpus_app.command("msppodcast")
def msppodcast_command(
    root: Path = typer.Argument(..., help=ROOT_HELP + " Labels/labels_consensus.csv with audio in Audios/."),
    out: Path = typer.Option(..., "--out", "-o", help=OUT_HELP),
) -> None:
    """MSP-Podcast: EmoClass labels (contempt, other, no_agreement kept as their own), V/A/D, split, speaker;
    per-annotator votes from Labels/labels_detailed.csv where present."""
    from melt.corpus.emotion_corpora import load_msppodcast

    check_output_file(out)

    _finish(load_msppodcast(root, progress=True), out, None)


@corpus_app.command("folds")
def folds_command(
    table_path: Path = typer.Argument(..., metavar="TABLE", help="Utterance table (CSV or Parquet)."),
    out: Path = typer.Option(..., "--out", "-o", help=OUT_HELP),
    by: str = typer.Option("speaker", "--by", help="Keep each speaker (or each session) within one fold."),
    k: int | None = typer.Option(
        None, "--k", help="Number of folds (default: 5 by speaker; one per session by session)."
    ),
    seed: int = typer.Option(0, "--seed", help="Orders groups of equal size; same seed, same folds."),
) -> None:
    """Write a `fold` column (1..K) in which no speaker (or session) is in two folds, folds balanced in utterances."""
    from melt.corpus.folds import FOLD_GROUPS, assign_folds, speaker_overlap
    from melt.corpus.schema import read_table, write_table

    if by not in FOLD_GROUPS:
        raise MeltError(f"--by takes {' or '.join(FOLD_GROUPS)}, got {by!r}")
    check_output_file(out)
    table = read_table(table_path)
    if k is None:
        k = int(table[by].nunique()) if by == "session" and by in table.columns else 5
    table["fold"] = assign_folds(table, by=by, k=k, seed=seed, source=table_path)
    overlap = speaker_overlap(table, parts="fold")
    console = Console()
    counts = table.groupby("fold").agg(utterances=("id", "size"), speakers=("speaker", "nunique"))
    summary = Table(title=f"{k} folds by {by} (seed {seed})")
    for column in ("fold", "utterances", "speakers"):
        summary.add_column(column, justify="right")
    for fold, row in counts.iterrows():
        summary.add_row(str(fold), str(row.utterances), str(row.speakers))
    console.print(summary)
    unassigned = int(table["fold"].isna().sum())
    if unassigned:
        console.print(f"[yellow]{unassigned} row(s) without a {by} got no fold[/]")
    if len(overlap):
        console.print(f"[yellow]speakers shared between folds (a speaker in several {by}s):[/]")
        console.print(_overlap_table(overlap))
    write_table(table, out)
    console.print(f"wrote {len(table)} rows to {out}")


@corpus_app.command("overlap")
def overlap_command(
    table_path: Path = typer.Argument(..., metavar="TABLE", help="Utterance table (CSV or Parquet)."),
    between: str = typer.Option("fold", "--between", help="Column whose parts to compare: fold, split, ..."),
) -> None:
    """Report speakers found in two parts of a table (exit 1 if any): a speaker-independence check."""
    from melt.corpus.folds import speaker_overlap
    from melt.corpus.schema import read_table

    table = read_table(table_path)
    overlap = speaker_overlap(table, parts=between, source=table_path)
    parts = table[between].dropna().nunique()
    if parts < 2:
        raise MeltError(f"column {between!r} has {parts} value(s): no two parts to compare", file=table_path)
    console = Console()
    if overlap.empty:
        console.print(
            f"no speaker is in two {between}s ({parts} {between}s, {table['speaker'].nunique()} speakers)"
        )
        return
    console.print(_overlap_table(overlap))
    console.print(f"[red]{len(overlap)} pair(s) of {between}s share speakers[/]")
    raise typer.Exit(1)


def _overlap_table(overlap: pd.DataFrame) -> Table:
    shown = Table()
    for column in overlap.columns:
        shown.add_column(column)
    for row in overlap.itertuples(index=False):
        shown.add_row(*(str(v) for v in row))
    return shown


@corpus_app.command("describe")
def describe_command(
    table_path: Path = typer.Argument(..., metavar="TABLE", help="Utterance table (CSV or Parquet)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for describe.json and the PNG figures."),
) -> None:
    """Utterances, speakers, hours, durations, labels per split/fold, votes per utterance: printed, and written
    as describe.json plus durations.png, labels.png and votes.png."""
    from melt.corpus.describe import print_description, write_description
    from melt.corpus.schema import read_table

    check_output_folder(out)
    description = write_description(read_table(table_path), out, source=table_path)
    print_description(description, Console())
    Console().print(f"written to {out}/ (describe.json, {', '.join(description['figures'])})")
