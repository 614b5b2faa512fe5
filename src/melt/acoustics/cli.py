"""`melt audio ...` and `melt acoustics ...` commands: thin wrappers over `melt.acoustics`.

Heavy imports (openSMILE, soundfile, matplotlib) happen inside the commands so `melt --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import typer
from rich.table import Table

from melt import terminal

audio_app = terminal.command_group("Prepare utterance audio: extract 16 kHz mono WAV from corpus clips.")
acoustics_app = terminal.command_group(
    "eGeMAPS features with openSMILE, and the check of the LLM's voice descriptions against them."
)

_console = terminal.console()


@audio_app.command("extract")
def audio_extract(
    corpus: Path = typer.Argument(
        ..., help="Corpus table (CSV or Parquet) with ids such as train/dia0_utt0."
    ),
    clips: Path = typer.Option(..., "--clips", help="Folder of clips (e.g. MELD.Raw), searched recursively."),
    out: Path = typer.Option(..., "--out", help="Folder for the WAV files, named by corpus id."),
    table_out: Path | None = typer.Option(
        None, "--table-out", help="Where to write the updated table.", show_default="over CORPUS"
    ),
    workers: int = typer.Option(2, "--workers", min=1, help="Clips decoded at the same time."),
) -> None:
    """Decode each row's clip to 16 kHz mono WAV and fill the table's audio, duration and audio_problem columns."""
    from melt.acoustics.audio import extract_audio
    from melt.outputs import check_output_file, check_output_folder

    check_output_folder(out)
    check_output_file(table_out or corpus, option="--table-out")

    result = extract_audio(corpus, clips, out, table_out=table_out, workers=workers)
    _console.print(f"{result.converted} of {len(result.table)} utterances have audio in {out}")
    if len(result.problems):
        _console.print(
            f"[yellow]{len(result.problems)} skipped[/] (reasons in {out / 'audio_problems.csv'}):"
        )
        for reason, count in result.problems["reason"].value_counts().head(5).items():
            _console.print(f"  {count} × {reason}")
    _console.print(f"table written to {table_out or corpus}")


@acoustics_app.command("extract")
def acoustics_extract(
    corpus: Path = typer.Argument(
        ..., help="Corpus table with an `audio` column (paths relative to the table)."
    ),
    out: Path = typer.Option(
        ..., "--out", help="Features Parquet file; an existing one serves as the cache."
    ),
    workers: int | None = typer.Option(
        None, "--workers", min=1, help="Worker processes.", show_default="the number of CPUs"
    ),
    cache: bool = typer.Option(
        True, "--cache/--no-cache", help="Reuse rows of OUT whose audio is unchanged."
    ),
) -> None:
    """eGeMAPSv02 functionals per utterance with openSMILE, in parallel, cached by audio content."""
    from melt.acoustics.features import extract_features
    from melt.outputs import check_output_file

    check_output_file(out, suffixes=(".parquet",))
    features = extract_features(corpus, out, workers=workers, cache=cache)
    counts = features.attrs["melt"]
    failed = features["error"].notna()
    _console.print(
        f"{int((~failed).sum())} of {len(features)} utterances have features "
        f"({counts['processed']} files processed, {counts['reused']} reused from the cache); written to {out}"
    )
    if failed.any():
        _console.print(f"[yellow]{int(failed.sum())} skipped[/] (see the `error` column):")
        for reason, count in features.loc[failed, "error"].value_counts().head(5).items():
            _console.print(f"  {count} × {reason}")


@acoustics_app.command("check")
def acoustics_check(
    run_dir: Path = typer.Argument(
        ..., help="Annotation run folder (annotations.parquet/.csv) or the file itself."
    ),
    features: Path = typer.Option(..., "--features", help="Features Parquet from `melt acoustics extract`."),
    out: Path = typer.Option(..., "--out", help="Folder for summary.json, rows.csv, PNGs and the report."),
    per: Literal["split", "speaker"] = typer.Option(
        "split", "--per", help="Bin per split, or per speaker within each split."
    ),
    rate_feature: str = typer.Option(
        "syllables_per_sec",
        "--rate-feature",
        help="Feature for rhythm speed (e.g. VoicedSegmentsPerSec).",
    ),
    min_group: int = typer.Option(10, "--min-group", min=1, help="Fewest values a bin group needs."),
) -> None:
    """Score the voice descriptions (pitch, loudness, rhythm speed) against eGeMAPS bins: UAR, ACC, macro-F1."""
    from melt.acoustics.check import run_check, scores_table
    from melt.outputs import check_output_folder

    check_output_folder(out)

    columns = {"rhythm_speed": rate_feature}
    result = run_check(run_dir, features, out, per=per, feature_columns=columns, min_group=min_group)
    scores = scores_table(result)
    table = Table(title=f"Acoustic check (bins per {per})")
    shown = ("attribute", "split", "n", "unknown", "unbinned", "not_ok", "uar", "acc", "f1")
    for column in shown:
        table.add_column(column, justify="left" if column in ("attribute", "split") else "right")
    for record in scores.to_dict("records"):
        table.add_row(*[_fmt(record[c]) for c in shown])
    _console.print(table)
    _console.print(f"written to {out}/ (summary.json, report.html)")


def _fmt(value: object) -> str:
    if value is None:
        return "–"
    return f"{value:.3f}" if isinstance(value, float) else str(value)
