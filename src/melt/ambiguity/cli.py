"""`melt ambiguity`: the CLI over `melt.ambiguity.analyse_ambiguity` and `write_ambiguity`."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from melt.errors import MeltError


def ambiguity_command(
    corpus: Path = typer.Argument(
        ..., help="Corpus table (.parquet or .csv) with per-rater human votes in its 'votes' column."
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Folder for metrics.csv, summary.json, distributions.parquet, plots, report."
    ),
    votes: Path | None = typer.Option(
        None,
        "--votes",
        help="Run folder of a panel (melt annotate --panel) holding votes.parquet, or that file. Without it: "
        "human-only statistics.",
    ),
    config_file: Path | None = typer.Option(
        None, "--config", help="YAML file of settings; flags override it."
    ),
    synthetic_weight: float | None = typer.Option(
        None,
        "--synthetic-weight",
        help="Weight W of one synthetic vote in the combined distribution, against 1 per human rater "
        "(default 1, as in the paper).",
    ),
    entropy_norm: str | None = typer.Option(
        None,
        "--entropy-norm",
        help="Ambiguity = entropy / log(labels present) ('present', default, the paper's code) or / log K "
        "('classes').",
    ),
    labels: str | None = typer.Option(
        None,
        "--labels",
        help="Comma-separated label set (default: the seven MELT labels); votes outside it are dropped and "
        "counted.",
    ),
    seeds: str | None = typer.Option(
        None, "--seeds", help="Comma-separated seeds of the split-half repetitions (default 0,1,2,3,4)."
    ),
    saturation_draws: int | None = typer.Option(
        None,
        "--saturation-draws",
        help="Random sub-panels per panel size in the saturation curve (default 5).",
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

    config = AmbiguityConfig.load(
        config_file,
        labels=[label for label in labels.split(",") if label.strip()] if labels is not None else None,
        synthetic_weight=synthetic_weight,
        entropy_norm=entropy_norm,
        seeds=_seeds(seeds),
        saturation_draws=saturation_draws,
    )
    raw = read_any(corpus)
    if VOTES not in raw.columns:  # checked before conform() adds an empty votes column
        raise MeltError(
            f"no {VOTES!r} column: melt ambiguity needs per-rater human votes (e.g. from an IEMOCAP-layout "
            f"corpus); found {list(raw.columns)}",
            file=corpus,
        )
    table = conform(raw, source=corpus)
    try:  # before the work, so an unusable folder is reported at once
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MeltError(f"cannot create the output folder ({exc.strerror or exc})", file=out) from exc
    result = analyse_ambiguity(table, votes, config, source=corpus, progress=not quiet)
    try:
        summary = write_ambiguity(
            result,
            out,
            corpus_path=corpus,
            votes_path=votes,
            command=shlex.join(["melt", *sys.argv[1:]]),
        )
    except OSError as exc:
        raise MeltError(
            f"cannot write the outputs ({exc.strerror or exc})", file=exc.filename2 or exc.filename or out
        ) from exc
    print_summary(summary)
    Console(highlight=False).print(f"report: {(out / 'report.html').resolve()}")


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
    console = Console(highlight=False)
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
