"""`melt ambiguity`: the CLI over `melt.ambiguity.analyse_ambiguity` and `write_ambiguity`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import typer
from rich.table import Table

from melt import terminal
from melt.errors import MeltError


def ambiguity_command(
    context: typer.Context,
    corpus: Path = typer.Argument(
        ..., help="Corpus table (.parquet or .csv) with per-rater human votes in its 'votes' column."
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Folder for metrics.csv, summary.json, distributions.parquet, plots, report."
    ),
    votes: Path | None = typer.Option(
        None,
        "--votes",
        help="Run folder of a panel (melt annotate --panel) holding votes.parquet, or that file.",
        show_default="none: human-only statistics",
    ),
    config_file: Path | None = typer.Option(
        None, "--config", help="YAML file of settings; flags override it.", show_default="none"
    ),
    synthetic_weight: float = typer.Option(
        1.0,
        "--synthetic-weight",
        help="Weight W of one synthetic vote in the combined distribution, against 1 per human rater (the "
        "paper: 1).",
    ),
    entropy_norm: Literal["present", "classes"] = typer.Option(
        "present",
        "--entropy-norm",
        help="Ambiguity = entropy / log(labels present) ('present', the paper's code) or / log K ('classes').",
    ),
    labels: str | None = typer.Option(
        None,
        "--labels",
        help="Comma-separated label set; votes outside it are dropped and counted.",
        show_default="the seven MELT labels",
    ),
    seeds: str = typer.Option(
        "0,1,2,3,4", "--seeds", help="Comma-separated seeds of the split-half repetitions."
    ),
    saturation_draws: int = typer.Option(
        5, "--saturation-draws", help="Random sub-panels per panel size in the saturation curve."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Emotion distributions (human, synthetic, combined), ambiguity tertiles and distribution metrics.

    Each source is scored per ambiguity tertile the paper's way (against the full human distribution).

    And split-half: human raters split into a reference half and a candidate half, per seed (docs/ambiguity.md).

    Example: melt ambiguity iemocap.parquet --votes panel_run/ --out amb/
    """
    from melt.ambiguity.config import AmbiguityConfig
    from melt.ambiguity.evaluate import analyse_ambiguity
    from melt.ambiguity.report import write_ambiguity
    from melt.corpus.schema import VOTES, conform, read_any
    from melt.outputs import check_output_folder

    check_output_folder(out)
    # Flags left at their defaults do not override the --config file.
    given = terminal.options_given(context)
    settings = {
        "labels": [label for label in labels.split(",") if label.strip()] if labels is not None else None,
        "synthetic_weight": synthetic_weight,
        "entropy_norm": entropy_norm,
        "seeds": _seeds(seeds),
        "saturation_draws": saturation_draws,
    }
    config = AmbiguityConfig.load(config_file, **{k: v for k, v in settings.items() if k in given})
    raw = read_any(corpus)
    if VOTES not in raw.columns:  # checked before conform() adds an empty votes column
        raise MeltError(
            f"no {VOTES!r} column: melt ambiguity needs per-rater human votes (e.g. from an IEMOCAP-layout "
            f"corpus); found {list(raw.columns)}",
            file=corpus,
        )
    table = conform(raw, source=corpus)
    result = analyse_ambiguity(table, votes, config, source=corpus, progress=not quiet)
    try:
        summary = write_ambiguity(
            result,
            out,
            corpus_path=corpus,
            votes_path=votes,
        )
    except OSError as exc:
        raise MeltError(
            f"cannot write the outputs ({exc.strerror or exc})", file=exc.filename2 or exc.filename or out
        ) from exc
    print_summary(summary)
    terminal.console().print(f"report: {(out / 'report.html').resolve()}")


def _seeds(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise MeltError(f"--seeds: expected comma-separated integers, got {text!r}") from exc
    if not seeds:
        raise MeltError("--seeds: give at least one seed")
    return seeds


def print_summary(summary: dict) -> None:
    console = terminal.console()
    table = Table(title="melt ambiguity: all tertiles (metrics.csv has each tertile)")
    for column in ("protocol", "source", "n", "jsd", "bc", "r2", "ece", "acc", "f1_macro"):
        table.add_column(column, justify="left" if column in ("protocol", "source") else "right")
    for row in summary["metrics"]:
        if row["tertile"] == "all":
            table.add_row(
                row["protocol"],
                row["source"],
                str(row["n"]),
                *(_number(row[m]) for m in ("jsd", "bc", "r2", "ece", "acc", "f1_macro")),
            )
    console.print(table)
    for agreement in summary["agreement"]:
        if agreement["tertile"] == "all":
            console.print(
                f"{agreement['raters']}: Fleiss' κ {_number(agreement['fleiss_kappa'])}, "
                f"Krippendorff's α {_number(agreement['krippendorff_alpha'])} ({agreement['units']} utterances)"
            )
    for note in summary["notes"]:
        console.print(f"note: {note}")


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
