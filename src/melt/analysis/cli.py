"""`melt compare`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from melt.errors import MeltError


def compare_command(
    input: Path = typer.Argument(
        ...,
        help="A corpus table (Parquet/CSV), any CSV with two label columns (e.g. a published MELT file), "
        "a run directory of `melt annotate` (joined to its corpus table), or the decisions of "
        "`melt review import` (label = the reviewers' decision, llm_label, human_label).",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for summary.json, the figures and the report."),
    reference: str | None = typer.Option(
        None, "--reference", "-r", help="Reference label column. Default: 'label' (the human label)."
    ),
    candidate: str | None = typer.Option(
        None,
        "--candidate",
        "-c",
        help="Candidate label column. Default: 'emotion' for a run directory, else 'llm_label'.",
    ),
    labels: str | None = typer.Option(
        None, "--labels", help="Comma-separated label set. Default: the seven MELT labels."
    ),
) -> None:
    """Compare two label sources: counts, change rate, transitions, Cohen's κ and Krippendorff's α, with a report.

    Example: melt compare ../shared/data/melt/meld_train.csv --reference Emotion --candidate llm_label --out cmp/
    """
    from melt.analysis.compare import compare_labels, load_labelled, write_comparison
    from melt.corpus.labels import MELT_LABEL_SET, LabelSet

    table, default_reference, default_candidate = load_labelled(input)
    reference = reference or default_reference
    candidate = candidate or default_candidate
    for column in (reference, candidate):
        if column not in table.columns:
            raise MeltError(
                f"no label column {column!r}; found {list(table.columns)}", file=input, column=column
            )
    label_set = LabelSet.from_labels(labels.split(",")) if labels else MELT_LABEL_SET
    comparison = compare_labels(
        table[reference].tolist(),
        table[candidate].tolist(),
        reference_name=reference,
        candidate_name=candidate,
        labels=label_set,
    )
    summary = write_comparison(comparison, out, title=f"Label comparison: {input.name}")
    print_summary(summary)
    Console().print(f"report: {(out / 'report.html').resolve()}")


def print_summary(summary: dict) -> None:
    console = Console()
    table = Table(title=f"{summary['reference']} vs {summary['candidate']}")
    table.add_column("label")
    table.add_column(summary["reference"], justify="right")
    table.add_column(summary["candidate"], justify="right")
    for label, count in summary["counts"]["reference"].items():
        table.add_row(label, str(count), str(summary["counts"]["candidate"].get(label, 0)))
    console.print(table)
    console.print(
        f"n = {summary['n']}, changed = {summary['changed']} ({summary['change_rate']:.2%}), "
        f"κ = {summary['cohen_kappa']:.4f}, α = {summary['krippendorff_alpha']:.4f}"
        + (f", left out (missing label) = {summary['missing']}" if summary["missing"] else "")
    )
    if summary["off_label"]:
        console.print(
            "labels outside the set: " + ", ".join(f"{k} {v}" for k, v in summary["off_label"].items())
        )
